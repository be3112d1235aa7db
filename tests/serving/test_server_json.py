"""The local server writes outputs as TF Serving's REST API does (json_tensor.cc)."""

from __future__ import annotations

import numpy as np

from keras_siamese.serving.server import _jsonable


def test_strings_go_as_text_unless_their_output_is_named_bytes():
    labels = np.array([b"s1", "é".encode(), b"\xff"], dtype=object)
    assert _jsonable("label", labels) == ["s1", "é", {"b64": "/w=="}]
    assert _jsonable("image_bytes", labels[:1]) == [{"b64": "czE="}]
    # A scalar stays a scalar, and numbers keep their shape.
    assert _jsonable("model_id", np.array(b"abc", dtype=object)) == "abc"
    assert _jsonable("scores", np.arange(4.0).reshape(2, 2)) == [[0.0, 1.0], [2.0, 3.0]]
