"""TF Serving's models.config as the local server reads it (`server.read_model_config`)."""

from __future__ import annotations

import pytest

from keras_siamese.serving.server import read_model_config


def _write(folder, text: str):
    path = folder / "models.config"
    path.write_text(text)
    return path


def test_specific_versions_labels_and_a_container_base_path(tmp_path):
    (tmp_path / "siamese").mkdir()
    config = read_model_config(_write(tmp_path, """
        model_config_list {
          config {
            name: "siamese"
            base_path: "/models/siamese"
            model_platform: "tensorflow"
            model_version_policy { specific { versions: 1 versions: 2 } }
            version_labels { key: "stable" value: 1 }
            version_labels { key: "canary" value: 2 }
          }
        }
    """))
    assert config.name == "siamese"
    # /models/siamese does not exist here: the folder of that name beside the config.
    assert config.base_path == tmp_path / "siamese"
    assert (config.policy, config.versions) == ("specific", frozenset({1, 2}))
    assert config.labels == {"stable": 1, "canary": 2}


def test_the_default_policy_is_the_latest_version_and_existing_paths_are_kept(tmp_path):
    base = tmp_path / "exports" / "faces"
    base.mkdir(parents=True)
    config = read_model_config(_write(tmp_path, f"""
        model_config_list {{ config {{ name: "faces" base_path: "{base}" }} }}
    """))
    assert (config.name, config.base_path, config.policy, config.labels) == (
        "faces", base, "latest", {}
    )
    config = read_model_config(_write(tmp_path, f"""
        model_config_list {{ config {{ name: "faces" base_path: "{base}"
          model_version_policy {{ all {{}} }} }} }}
    """))
    assert config.policy == "all"


@pytest.mark.parametrize("text, message", [
    ("model_config_list { config { name: ", "cannot read the model config"),
    (("model_config_list { config { name: 'a' base_path: '/m/a' } config { name: 'b' "
      "base_path: '/m/b' } }"), "lists 2 models; this server serves one"),
    (("model_config_list { config { name: 'a' base_path: '/m/a' model_version_policy { "
      "specific { versions: 1 } } version_labels { key: 'canary' value: 2 } } }"),
     "name versions the specific policy does not serve"),
    (("model_config_list { config { name: 'a' base_path: '/m/a' model_version_policy { "
      "latest { num_versions: 2 } } } }"), "serves the latest version only"),
    ("model_config_list { config { name: 'a' base_path: '/m/a' model_platform: 'pytorch' } }",
     "model_platform 'pytorch'"),
    ("model_config_list { config { base_path: '/m/a' } }", "needs a name and a base_path"),
])  # fmt: skip
def test_configs_the_server_cannot_serve_are_refused_with_the_reason(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        read_model_config(_write(tmp_path, text))
