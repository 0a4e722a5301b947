"""The wine table tests write as "your own data": scikit-learn's wine records with a made-up site
column, and experts an institution fitted on it (tests/data, tests/experts)."""

from __future__ import annotations

import re

import numpy as np
from omegaconf import OmegaConf


def wine_table(path, rows=None):
    """scikit-learn's wine data with a made-up hospital column and a text column."""
    from sklearn.datasets import load_wine

    X, y = load_wine(return_X_y=True, as_frame=True)
    frame = X.copy()
    frame["cultivar"] = [f"cultivar_{v}" for v in y]
    frame["hospital"] = np.random.default_rng(0).choice(["north", "south", "east", "west"], size=len(frame))
    frame["colour_band"] = np.where(frame["color_intensity"] > 5, "dark", "light")
    frame = frame if rows is None else frame.iloc[rows]
    frame.to_csv(path, index=False)
    return frame


def data_cfg(path, **extra):
    return OmegaConf.create({"name": "local", "path": str(path), "label": "cultivar", "features": None,
                             "labels": None, "public_fraction": 0.3, "test_fraction": 0.25, **extra})


def own_experts(frame, folder):
    """Two classifiers an institution fitted on 60 rows of its own, on the table's own columns and
    labels, saved with skops: a scaled logistic regression with the text column one-hot encoded,
    and a random forest on the numbers."""
    import skops.io
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rows = frame.sample(60, random_state=3)
    numbers = [c for c in frame.columns if c not in ("cultivar", "hospital", "colour_band")]
    X, y = rows[numbers + ["colour_band"]], rows["cultivar"]
    models = {
        "logreg": make_pipeline(ColumnTransformer([("n", StandardScaler(), numbers),
                                                   ("t", OneHotEncoder(handle_unknown="ignore"),
                                                    ["colour_band"])]),
                                LogisticRegression(max_iter=1000)),
        "forest": make_pipeline(ColumnTransformer([("n", "passthrough", numbers)]),
                                RandomForestClassifier(n_estimators=20, random_state=0)),
    }
    paths = []
    for name, model in models.items():
        skops.io.dump(model.fit(X, y), folder / f"{name}.skops")
        paths.append(str(folder / f"{name}.skops"))
    return paths


def skl2onnx_file(frame, numbers, path, classes=None, **options):
    """A scikit-learn pipeline (scaling, one-hot colour band, logistic regression) fitted on 60
    rows, converted by skl2onnx with one input per column; returns the fitted pipeline."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rows = frame.sample(60, random_state=3)
    rows = rows if classes is None else frame[frame["cultivar"].isin(classes)]
    model = make_pipeline(ColumnTransformer([("n", StandardScaler(), numbers),
                                             ("t", OneHotEncoder(handle_unknown="ignore"), ["colour_band"])]),
                          LogisticRegression(max_iter=1000))
    model.fit(rows[numbers + ["colour_band"]], rows["cultivar"])
    types = [(c, FloatTensorType([None, 1])) for c in numbers]
    types.append(("colour_band", StringTensorType([None, 1])))
    path.write_bytes(to_onnx(model, initial_types=types, options=options or None).SerializeToString())
    return model


def torch_file(frame, numbers, path):
    """A torch ``Linear`` layer on the raw numeric columns, saved as a state dict: a logistic
    regression fitted on 60 scaled rows with the scaling folded into its weights. Returns the
    ``experts.members`` entry that names it."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rows = frame.sample(60, random_state=4)
    scaler = StandardScaler().fit(rows[numbers])
    lr = LogisticRegression(max_iter=1000).fit(scaler.transform(rows[numbers]), rows["cultivar"])
    linear = torch.nn.Linear(len(numbers), len(lr.classes_))
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(lr.coef_ / scaler.scale_))
        linear.bias.copy_(torch.tensor(lr.intercept_ - (lr.coef_ / scaler.scale_) @ scaler.mean_))
    torch.save(linear.state_dict(), path)
    return {"path": str(path), "module": "torch.nn.Linear", "columns": numbers,
            "kwargs": {"in_features": len(numbers), "out_features": len(lr.classes_)}}


def hydra_value(value):
    """A list or mapping of plain values as a Hydra override value."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    text = str(value)
    if re.search(r"[^\w./:-]", text):  # spaces, braces, quotes: a quoted string
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return text
