"""What a ledger refuses or cannot read: importable without the accounting (a site's message
handlers catch these before any of it is loaded)."""


class BudgetExceeded(RuntimeError):
    """A release was refused because it would take the site past its budget."""


class LedgerUnreadable(RuntimeError):
    """A file is not a readable privacy ledger; the message names the file and why."""


class UnknownReservation(LookupError):
    """A settlement names no reservation of this ledger (or one of another mechanism)."""
