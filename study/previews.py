"""How a run's preview images are stored: the first few val images, their labels and its prediction.

A retrain or ablate row keeps them (``records.PREVIEW``) so that the report can draw them from the
Parquet alone, on a machine without the dataset. Label maps are PNGs of uint8 class ids (255 =
ignore; lossless, and any image library reads them back as the ids); the input image, which is only
looked at, is a JPEG, a tenth of a PNG on photos. Torch-free: the report reads them too.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

PREVIEW_IMAGES = 6  # the first 6 val images: the same for every run, so runs compare image by image


def _encoded(array: np.ndarray, kind: str) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    if kind == "JPEG":  # 4:4:4 and high quality: small digits keep their colours
        Image.fromarray(array).save(out, format="JPEG", quality=92, subsampling=0)
    else:
        Image.fromarray(array).save(out, format="PNG", optimize=True)
    return out.getvalue()


def encode(index: int, image: np.ndarray, label: np.ndarray, prediction: np.ndarray) -> dict[str, Any]:
    """One entry of the ``val_preview`` column: uint8 arrays [H, W, 3], [H, W] and [H, W]."""
    for name, array in (("image", image), ("label", label), ("prediction", prediction)):
        if array.dtype != np.uint8:
            raise ValueError(f"preview {name} of dtype {array.dtype}: expected uint8")
    return {"index": int(index), "image": _encoded(image, "JPEG"), "label": _encoded(label, "PNG"),
            "prediction": _encoded(prediction, "PNG")}


def decode(blob: bytes) -> np.ndarray:
    """A stored image or label map back as a uint8 array ([H, W, 3] or [H, W])."""
    from PIL import Image

    with Image.open(io.BytesIO(blob)) as image:
        return np.asarray(image).copy()
