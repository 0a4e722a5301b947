# Sourced by scripts/pilot --netns: the pilot's parties as separate hosts on one machine. Each party
# (coordinator, site_<i>) gets a network namespace, joined by a veth pair to a bridge in a namespace
# of its own (the root namespace gets no interface or address), a Unix user and a folder (mode 0700)
# only that user can read. The site users cannot open the coordinator's files: the shared experts
# and initial combiner must reach them over the wire. netns_down removes all of it, from any state.
# Uses from scripts/pilot: sites, hosts_dir, logs, link_dir, link_keys, site_dir, site_keys.

NETNS_SUBNET=10.77.0
NETNS_MARK="fedens pilot rehearsal (scripts/pilot --netns)"  # the comment of the users made here
NETNS_LOCK=/run/fedens-pilot-netns.lock  # one rehearsal at a time: they share the user names
netns_tag=$$; netns_made=(); users_made=(); opened=(); listed=()

netns_preflight() {  # root, `ip netns` that works here, at most 245 sites; else one line and exit 2
  [ "$(id -u)" = 0 ] || { echo "scripts/pilot: --netns needs root (it makes namespaces and users), running as uid $(id -u)" >&2; exit 2; }
  if ! { command -v ip >/dev/null && ip netns add "fedens-$netns_tag-probe" 2>/dev/null; }; then
    echo "scripts/pilot: --netns needs \`ip netns\` (iproute2, and network namespaces allowed here): it is not available" >&2; exit 2
  fi
  ip netns del "fedens-$netns_tag-probe"
  [ "$sites" -le 245 ] || { echo "scripts/pilot: --netns takes N <= 245 (site i is $NETNS_SUBNET.(10+i)), got $sites" >&2; exit 2; }
}

party_user() { if [ "$1" = coordinator ]; then echo fedens-coordinator; else echo "fedens-site-${1#site_}"; fi; }
party_ns() { echo "fedens-$netns_tag-${1/_/}"; }
party_addr() { if [ "$1" = coordinator ]; then echo "$NETNS_SUBNET.1"; else echo "$NETNS_SUBNET.$((10 + ${1#site_}))"; fi; }
party_dir() { if [ "$1" = coordinator ]; then echo "$link_dir"; else site_dir "${1#site_}"; fi; }
parties() { echo coordinator; for ((i = 0; i < sites; i++)); do echo "site_$i"; done; }

# The numeric libraries' settings pass through on purpose: OpenBLAS chooses its kernels by
# OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE (set on machines whose processors older builds mishandle), and
# thread counts change float summation order. Without them the parties would compute with other
# kernels than a simulation on the same machine, and their floats would differ.
NUMERIC_ENV_PATTERN='^(OPENBLAS_[A-Z0-9_]*|GOTO_[A-Z0-9_]*|OMP_[A-Z0-9_]*|MKL_[A-Z0-9_]*|BLIS_[A-Z0-9_]*|NVPL_[A-Z0-9_]*)='

numeric_env() {  # the numeric-library variables of this environment, as NAME=value words
  env | grep -E "$NUMERIC_ENV_PATTERN" || true
}

netns_as() {  # sets `as`: run a command in party $1's namespace, as its user, HOME its folder
  local user numeric; user=$(party_user "$1")
  mapfile -t numeric < <(numeric_env)
  as=(ip netns exec "$(party_ns "$1")" setpriv --reuid="$user" --regid="$user" --init-groups
      env -i PATH="$PWD/.venv/bin:/usr/local/bin:/usr/bin:/bin" HOME="$(party_dir "$1")" LANG=C.UTF-8
      FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 "${numeric[@]}")
}

make_user() {  # made unless it exists; removed at exit if it carries our mark (made now or by a crashed rehearsal)
  getent passwd "$1" >/dev/null || useradd --system --user-group --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin --comment "$NETNS_MARK" "$1"
  [ "$(getent passwd "$1" | cut -d: -f5)" != "$NETNS_MARK" ] || users_made+=("$1")
}

open_path() {  # let every user traverse to each path (o+x on each directory up to it); undone at exit
  local path d
  for path in "$@"; do
    d=$path
    while :; do
      (( 0$(stat -c %a "$d") & 1 )) || { chmod o+x "$d"; opened+=("$d"); }
      [ "$d" = / ] && break
      d=$(dirname "$d")
    done
  done
}

open_listing() {  # let every user list a folder (o+r; e.g. a clone made by `mktemp -d` is 0700); undone at exit
  (( 0$(stat -c %a "$1") & 4 )) || { chmod o+r "$1"; listed+=("$1"); }
}

netns_up() {  # the namespaces, the bridge, one veth pair per party, the users, the parties' folders
  exec {netns_lock_fd}> "$NETNS_LOCK"
  flock -n "$netns_lock_fd" || { echo "scripts/pilot: another --netns rehearsal is running (lock $NETNS_LOCK)" >&2; exit 1; }
  local hub="fedens-$netns_tag-net" p ns
  ip netns add "$hub"; netns_made+=("$hub")
  ip -n "$hub" link add br0 type bridge
  ip -n "$hub" link set br0 up
  for p in $(parties); do
    ns=$(party_ns "$p")
    ip netns add "$ns"; netns_made+=("$ns")
    ip link add eth0 netns "$ns" type veth peer name "v-${p/_/}" netns "$hub"
    ip -n "$hub" link set "v-${p/_/}" master br0 up
    ip -n "$ns" addr add "$(party_addr "$p")/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    make_user "$(party_user "$p")"
    mkdir -p "$(party_dir "$p")"
  done
  # what the parties' processes read: the interpreter, the venv, the fedens source, their folders
  open_path "$(python -c 'import sys; print(sys.base_prefix)')" "$PWD/.venv" "$PWD" "$hosts_dir"
  open_listing "$PWD"  # `flwr run` packs the app from this folder as the coordinator's user
  echo "scripts/pilot: coordinator $(party_user coordinator) at $(party_addr coordinator), site i" \
       "fedens-site-i at $NETNS_SUBNET.(10+i), each in its own network namespace (fedens-$netns_tag-*)"
}

netns_hand_out_keys() {  # the coordinator: CA, its certificate and key, the sites' public keys; site i: CA, its key
  local keys=$1 i
  mkdir -p "$link_keys"
  cp "$keys/ca.crt" "$keys/server.crt" "$keys/server.key" "$keys"/site_*.pub "$link_keys/"
  for ((i = 0; i < sites; i++)); do
    mkdir -p "$(site_keys "$i")"
    cp "$keys/ca.crt" "$keys/site_$i" "$(site_keys "$i")/"
  done
}

netns_stage_site_data() {  # each site's records into its own folder, as each institution brings its own:
  # the quickstart's partition, cut by the coordinator's code from the same config and seed
  local i
  local folders=()
  for ((i = 0; i < sites; i++)); do folders+=("$(site_dir "$i")"); done
  python - "${#folders[@]}" "${folders[@]}" "$@" <<'EOF'
import sys
from pathlib import Path

from fedens.cli import prevalidate
from fedens.files import write_atomic
from fedens.pipelines.ensemble import partitioned_task, site_data_bytes
from fedens.runs import compose as _compose

count = int(sys.argv[1])
folders, overrides = sys.argv[2:2 + count], [o for o in sys.argv[2 + count:] if not o.startswith("hydra.")]
prevalidate(overrides)  # a bad override: one line, exit 2
task, sites, _ = partitioned_task(_compose(overrides))
for folder, records in zip(folders, sites, strict=True):
    write_atomic(Path(folder) / "data.npz", site_data_bytes(task, records))
EOF
}

netns_seal() {  # each folder to its party's user, mode 0700; then check who can read what
  local p q others
  for p in $(parties); do
    chown -R "$(party_user "$p"):" "$(party_dir "$p")"
    chmod 700 "$(party_dir "$p")"
  done
  chmod 700 "$logs"  # written by this shell (root): the parties' logs are no party's to read
  netns_as site_0
  "${as[@]}" python -c "import fedens.federation.ensemble.client" 2>/dev/null ||
    { echo "scripts/pilot: user $(party_user site_0) cannot import fedens from $PWD/.venv: make it world-readable" >&2; exit 1; }
  for p in $(parties); do  # each party against the coordinator's folder and the next site's
    others=(site_0)
    [ "$p" = coordinator ] || others=(coordinator "site_$(( (${p#site_} + 1) % sites ))")
    for q in "${others[@]}"; do
      [ "$q" != "$p" ] || continue
      netns_as "$p"
      ! "${as[@]}" ls "$(party_dir "$q")" >/dev/null 2>&1 ||
        { echo "scripts/pilot: $(party_user "$p") can read $(party_dir "$q"): expected only $(party_user "$q")" >&2; exit 1; }
    done
  done
}

netns_down() {  # every process in the namespaces, the namespaces (their veths and bridge go with them),
  # the users made, the o+x and o+r bits added; tolerant of any partial state
  local ns pid user i d
  for ns in "${netns_made[@]}"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -TERM "$pid" 2>/dev/null || true; done
  done
  for ns in "${netns_made[@]}"; do
    for i in $(seq 50); do [ -z "$(ip netns pids "$ns" 2>/dev/null)" ] && break; sleep 0.2; done
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  for user in "${users_made[@]}"; do
    for pid in $(pgrep -u "$user"); do kill -KILL "$pid" 2>/dev/null || true; done
    userdel "$user" 2>/dev/null || echo "scripts/pilot: could not remove user $user" >&2
  done
  for ((i = ${#opened[@]} - 1; i >= 0; i--)); do chmod o-x "${opened[$i]}" 2>/dev/null || true; done
  for d in "${listed[@]}"; do chmod o-r "$d" 2>/dev/null || true; done
  netns_made=(); users_made=(); opened=(); listed=()
}
