"""umld oci's JSON against the runtime-spec's own JSON schemas (Debian's
golang-github-opencontainers-specs-dev ships them; runtime-tools'
validation suite is not packaged): the state it reports at every step of
the lifecycle, and the bundles the OCI tests feed it, which must be
configurations the spec allows or the tests prove nothing.  `features`
has no schema in that version: its fields are runc's, with runc's types."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.oci.conftest import Bundle, Runtime
from tests.oci.test_lifecycle import BAD_CONFIGS

SCHEMAS = Path("/usr/share/gocode/src/github.com/opencontainers/runtime-spec/schema")

pytestmark = [
    pytest.mark.uses_ptrace,
    pytest.mark.uses_fuse,
    pytest.mark.skipif(
        not (SCHEMAS / "state-schema.json").exists(),
        reason="the runtime-spec schemas (make test installs them)",
    ),
]


def validator(name: str) -> Any:
    """A draft-4 validator of ``name``, its relative $refs (defs.json,
    config-linux.json...) resolved among the schema files."""
    import jsonschema
    import referencing
    import referencing.jsonschema

    resources = []
    for path in SCHEMAS.glob("*.json"):
        contents = json.loads(path.read_text())
        resources.append(
            (
                path.as_uri(),
                referencing.Resource.from_contents(
                    contents, default_specification=referencing.jsonschema.DRAFT4
                ),
            )
        )
    registry: referencing.Registry[Any] = referencing.Registry().with_resources(resources)
    schema = {**json.loads((SCHEMAS / name).read_text()), "id": (SCHEMAS / name).as_uri()}
    return jsonschema.Draft4Validator(schema, registry=registry)


def test_the_state_is_valid_at_every_step(umld_oci: Runtime, bundle: Bundle) -> None:
    state = validator("state-schema.json")
    bundle.config["annotations"]["org.example.key"] = "value"
    path = bundle.command("exec sleep 100").write()
    umld_oci("create", "--bundle", str(path), "s1", check=True)
    seen = []
    for step in ("created", "start", "running", "kill", "stopped"):
        if step == "start":
            umld_oci("start", "s1", check=True)
            continue
        if step == "kill":
            umld_oci("kill", "s1", "KILL", check=True)
            wait_for(lambda: umld_oci.state_of("s1")["status"] == "stopped", "stopped")
            continue
        st = umld_oci.state_of("s1")
        state.validate(st)
        seen.append(st["status"])
        assert st["annotations"]["org.example.key"] == "value"
    assert seen == ["created", "running", "stopped"]
    umld_oci("delete", "s1", check=True)


def test_a_state_without_its_required_fields_is_refused_by_the_schema() -> None:
    """The schema is strict enough to catch a state that lacks what the
    spec requires (else the test above could not fail)."""
    import jsonschema

    state = validator("state-schema.json")
    with pytest.raises(jsonschema.ValidationError):
        state.validate({"ociVersion": "1.0.2", "id": "x", "status": "running"})
    with pytest.raises(jsonschema.ValidationError):
        state.validate({"ociVersion": "1.0.2", "id": "x", "status": "up", "bundle": "/b"})


def test_the_bundles_of_the_tests_are_valid_configs(bundle: Bundle) -> None:
    """The lifecycle tests' configurations, each variant: what the spec
    allows.  The bad ones are bad in umld's terms (a missing root, an
    overlap), not the schema's, unless the schema says so too."""
    config = validator("config-schema.json")
    config.validate(bundle.config)
    variants: dict[str, Any] = {
        "hooks": {"hooks": {"prestart": [{"path": "/bin/true", "args": ["true"], "timeout": 5}]}},
        "resources": {
            "linux": {
                **bundle.config["linux"],
                "resources": {
                    "cpu": {"quota": 150000, "period": 100000, "shares": 512},
                    "memory": {"limit": 1 << 26},
                    "pids": {"limit": 100},
                },
            }
        },
        "ids": {
            "linux": {
                **bundle.config["linux"],
                "uidMappings": [{"containerID": 0, "hostID": 300000, "size": 65536}],
                "gidMappings": [{"containerID": 0, "hostID": 300000, "size": 65536}],
            }
        },
        "terminal": {
            "process": {
                **bundle.config["process"],
                "terminal": True,
                "consoleSize": {"height": 24, "width": 80},
            }
        },
        "capabilities": {
            "process": {
                **bundle.config["process"],
                "capabilities": {"bounding": ["CAP_KILL"], "ambient": ["CAP_KILL"]},
            }
        },
    }
    for name, change in variants.items():
        errors = list(config.iter_errors({**bundle.config, **change}))
        assert not errors, (name, errors)
    refused = {"capabilities not a list", "a gid map without a host id"}
    for name, spoil in BAD_CONFIGS.items():
        data = json.loads(json.dumps(bundle.config))
        spoil(data)
        errors = list(config.iter_errors(data))
        assert bool(errors) == (name in refused), (name, errors)


@pytest.mark.skipif(shutil.which("runc") is None, reason="runc (make test installs it)")
def test_features_has_runcs_fields_and_types(umld_oci: Runtime) -> None:
    mine = json.loads(umld_oci("features", check=True).stdout)
    runc = json.loads(subprocess.run(["runc", "features"], capture_output=True, check=True).stdout)

    def shape(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: shape(v) for k, v in value.items()}
        return type(value).__name__

    def within(a: Any, b: Any, where: str) -> None:
        if isinstance(a, dict):
            assert isinstance(b, dict), where
            for k in a:
                assert k in b, f"{where}.{k}: not a field of runc's"
                within(a[k], b[k], f"{where}.{k}")
        else:
            assert a == b, f"{where}: {a}, runc's is {b}"

    # Annotations are the runtime's own names: strings, as runc's are.
    assert all(isinstance(v, str) for v in mine.pop("annotations").values())
    runc.pop("annotations")
    within(shape(mine), shape(runc), "features")
    assert {"ociVersionMin", "ociVersionMax", "hooks", "linux"} <= mine.keys()
    assert set(mine["linux"]["capabilities"]) >= {"CAP_CHOWN", "CAP_SYS_ADMIN", "CAP_KILL"}
