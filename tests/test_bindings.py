"""Service bindings from every source: VCAP_SERVICES, default-env.json, SERVICE_BINDING_ROOT.

Every malformed input must raise a ConfigurationError that names the culprit precisely and
never echoes a credential value.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from propagation.bindings import Binding, Bindings, default_env_path, load_default_env
from propagation.errors import ConfigurationError

SECRET = "s3cr3t-VALUE"
KEY = "-----BEGIN PRIVATE KEY-----\nPRIVATE-KEY-VALUE\n-----END PRIVATE KEY-----\n"

XSUAA = {
    "name": "my-xsuaa",
    "instance_name": "my-xsuaa",
    "label": "xsuaa",
    "plan": "application",
    "tags": ["xsuaa"],
    "credentials": {
        "clientid": "sb-app!t1",
        "clientsecret": SECRET,
        "url": "https://sub.authentication.eu10.hana.ondemand.com",
        "uaadomain": "authentication.eu10.hana.ondemand.com",
        "xsappname": "app!t1",
    },
}
IAS = {
    "name": "my-ias",
    "label": "identity",
    "plan": "application",
    "tags": ["ias", "identity"],
    "credentials": {"clientid": "ias-client", "clientsecret": SECRET, "url": "https://t.accounts.ondemand.com",
                    "domains": ["accounts.ondemand.com"]},
}
UPS = {"name": "my-ups", "label": "user-provided", "tags": ["custom"], "credentials": {"password": SECRET}}
CPI = {
    "name": "my-cpi",
    "label": "it-rt",
    "plan": "integration-flow",
    "tags": [],
    "credentials": {"oauth": {"url": "https://cpi.example.com", "tokenurl": "https://cpi.example.com/oauth/token",
                              "clientid": "cpi", "clientsecret": SECRET}},
}
VCAP = {"xsuaa": [XSUAA], "identity": [IAS], "user-provided": [UPS], "it-rt": [CPI]}


def assert_clean(message: str) -> None:
    """No credential value ever appears in an error message."""
    for secret in (SECRET, "PRIVATE-KEY-VALUE"):
        assert secret not in message


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def k8s_binding(root: Path, name: str, files: dict[str, Any]) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    for key, value in files.items():
        write(folder / key, value if isinstance(value, (str, bytes)) else json.dumps(value))
    return folder


# -- VCAP_SERVICES ----------------------------------------------------------------------------
def test_vcap_services_are_read_with_every_field(tmp_path: Path) -> None:
    b = Bindings.from_env({"VCAP_SERVICES": json.dumps(VCAP)}, cwd=tmp_path)
    assert len(b) == 4
    assert b.sources == ("VCAP_SERVICES",)
    xsuaa = b.find(label="xsuaa")
    assert xsuaa is not None
    assert (xsuaa.name, xsuaa.label, xsuaa.plan, xsuaa.tags, xsuaa.source) == (
        "my-xsuaa", "xsuaa", "application", ("xsuaa",), "VCAP_SERVICES")
    assert xsuaa.credentials["clientsecret"] == SECRET
    ups = b.find(name="my-ups")
    assert ups is not None and ups.label == "user-provided" and ups.plan is None


@pytest.mark.parametrize(
    "criteria, expected",
    [
        pytest.param({"label": "xsuaa"}, ["my-xsuaa"], id="label"),
        pytest.param({"name": "my-cpi"}, ["my-cpi"], id="name"),
        pytest.param({"tag": "identity"}, ["my-ias"], id="tag"),
        pytest.param({"label": "identity", "tag": "ias"}, ["my-ias"], id="label-and-tag"),
        pytest.param({"label": "identity", "name": "my-xsuaa"}, [], id="all-criteria-must-match"),
        pytest.param({"tag": "nope"}, [], id="unknown-tag"),
        pytest.param({}, ["my-xsuaa", "my-ias", "my-ups", "my-cpi"], id="no-criteria-all"),
    ],
)
def test_find_and_find_all(tmp_path: Path, criteria: dict[str, str], expected: list[str]) -> None:
    b = Bindings.from_env({"VCAP_SERVICES": json.dumps(VCAP)}, cwd=tmp_path)
    assert [x.name for x in b.find_all(**criteria)] == expected
    found = b.find(**criteria)
    assert (found.name if found else None) == (expected[0] if expected else None)


def test_several_instances_of_one_label_keep_their_order(tmp_path: Path) -> None:
    second = {**XSUAA, "name": "other-xsuaa", "tags": ["second"]}
    b = Bindings.from_env({"VCAP_SERVICES": json.dumps({"xsuaa": [XSUAA, second]})}, cwd=tmp_path)
    assert [x.name for x in b.find_all(label="xsuaa")] == ["my-xsuaa", "other-xsuaa"]
    assert b.find(label="xsuaa", tag="second").name == "other-xsuaa"  # type: ignore[union-attr]


def test_name_falls_back_to_instance_name_and_label_to_the_offering_key(tmp_path: Path) -> None:
    entry = {"instance_name": "inst", "credentials": {}}
    b = Bindings.from_env({"VCAP_SERVICES": json.dumps({"it-rt": [entry]})}, cwd=tmp_path)
    (only,) = list(b)
    assert (only.name, only.label, only.tags) == ("inst", "it-rt", ())


def test_uses_os_environ_by_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VCAP_SERVICES", json.dumps({"xsuaa": [XSUAA]}))
    monkeypatch.delenv("SERVICE_BINDING_ROOT", raising=False)
    assert [x.name for x in Bindings.from_env(cwd=tmp_path)] == ["my-xsuaa"]


@pytest.mark.parametrize("value", [pytest.param("", id="empty"), pytest.param("  \n", id="blank")])
def test_blank_vcap_services_counts_as_unset(tmp_path: Path, value: str) -> None:
    b = Bindings.from_env({"VCAP_SERVICES": value}, cwd=tmp_path)
    assert len(b) == 0 and b.sources == ()


def test_no_source_at_all(tmp_path: Path) -> None:
    b = Bindings.from_env({}, cwd=tmp_path)
    assert list(b) == [] and b.sources == () and b.find(label="xsuaa") is None


@pytest.mark.parametrize(
    "vcap, expected",
    [
        pytest.param('{"xsuaa": [', "VCAP_SERVICES is not valid JSON (line 1 column 12)", id="invalid-json"),
        pytest.param('{"a":\n x}', "VCAP_SERVICES is not valid JSON (line 2 column 2)", id="invalid-json-line-2"),
        pytest.param("[]", "VCAP_SERVICES is not a JSON object (found array)", id="not-object"),
        pytest.param({"xsuaa": {"name": "x"}}, "VCAP_SERVICES['xsuaa'] is not an array (found object)", id="label-not-array"),
        pytest.param({"xsuaa": ["x"]}, "VCAP_SERVICES['xsuaa'][0] is not an object (found string)", id="entry-not-object"),
        pytest.param({"xsuaa": [XSUAA, {"name": "b"}]}, "VCAP_SERVICES['xsuaa'][1] has no 'credentials' object",
                     id="no-credentials"),
        pytest.param({"xsuaa": [{"name": "b", "credentials": SECRET}]},
                     "VCAP_SERVICES['xsuaa'][0] has no 'credentials' object", id="credentials-not-object"),
        pytest.param({"xsuaa": [{"credentials": {"clientsecret": SECRET}}]}, "VCAP_SERVICES['xsuaa'][0] has no 'name'",
                     id="no-name"),
        pytest.param({"xsuaa": [{"name": "b", "tags": "xsuaa", "credentials": {"clientsecret": SECRET}}]},
                     "VCAP_SERVICES['xsuaa'][0] ('b') has 'tags' that are not an array of strings", id="tags-not-array"),
        pytest.param({"xsuaa": [{"name": "b", "plan": 3, "credentials": {}}]},
                     "VCAP_SERVICES['xsuaa'][0] ('b') has a 'plan' that is not a string", id="plan-not-string"),
        pytest.param({"xsuaa": [{"name": "b", "label": 7, "credentials": {}}]},
                     "VCAP_SERVICES['xsuaa'][0] ('b') has a 'label'", id="label-not-string"),
    ],
)
def test_malformed_vcap_services(tmp_path: Path, vcap: Any, expected: str) -> None:
    raw = vcap if isinstance(vcap, str) else json.dumps(vcap)
    with pytest.raises(ConfigurationError) as info:
        Bindings.from_env({"VCAP_SERVICES": raw}, cwd=tmp_path)
    assert expected in str(info.value)
    assert_clean(str(info.value))


def test_invalid_json_message_never_quotes_the_content(tmp_path: Path) -> None:
    raw = '{"xsuaa": [{"credentials": {"clientsecret": "' + SECRET + '" oops'
    with pytest.raises(ConfigurationError, match="VCAP_SERVICES is not valid JSON") as info:
        Bindings.from_env({"VCAP_SERVICES": raw}, cwd=tmp_path)
    assert_clean(str(info.value))


# -- default-env.json -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "vcap",
    [pytest.param({"xsuaa": [XSUAA]}, id="object"), pytest.param(json.dumps({"xsuaa": [XSUAA]}), id="json-string")],
)
def test_default_env_json_supplies_vcap_services(tmp_path: Path, vcap: Any) -> None:
    path = write(tmp_path / "default-env.json", json.dumps({"VCAP_SERVICES": vcap, "PORT": "5000"}))
    b = Bindings.from_env({}, cwd=tmp_path)
    assert b.sources == (f"default-env.json ({path})",)
    (only,) = list(b)
    assert (only.name, only.source) == ("my-xsuaa", f"default-env.json ({path})")


def test_default_env_json_in_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "default-env.json", json.dumps({"VCAP_SERVICES": {"xsuaa": [XSUAA]}}))
    monkeypatch.chdir(tmp_path)
    assert default_env_path() == tmp_path / "default-env.json"
    assert [x.name for x in Bindings.from_env({})] == ["my-xsuaa"]


def test_vcap_services_variable_wins_and_the_file_is_not_read(tmp_path: Path) -> None:
    write(tmp_path / "default-env.json", "{ not json")
    b = Bindings.from_env({"VCAP_SERVICES": json.dumps({"identity": [IAS]})}, cwd=tmp_path)
    assert [x.name for x in b] == ["my-ias"] and b.sources == ("VCAP_SERVICES",)


def test_default_env_json_without_vcap_services_is_no_binding_source(tmp_path: Path) -> None:
    write(tmp_path / "default-env.json", json.dumps({"destinations": []}))
    b = Bindings.from_env({}, cwd=tmp_path)
    assert len(b) == 0 and b.sources == ()


@pytest.mark.parametrize(
    "content, expected",
    [
        pytest.param('{"VCAP_SERVICES": {', "default-env.json is not valid JSON (line 1 column 20)", id="invalid-json"),
        pytest.param("[1, 2]", "default-env.json is not a JSON object (found array)", id="not-object"),
        pytest.param(b"\xff\xfe{}", "default-env.json is not UTF-8 text", id="not-utf8"),
        pytest.param(json.dumps({"VCAP_SERVICES": '{"xsuaa": ['}),
                     "VCAP_SERVICES in default-env.json (", id="vcap-string-invalid-json"),
        pytest.param(json.dumps({"VCAP_SERVICES": {"xsuaa": [{"name": "x", "credentials": [SECRET]}]}}),
                     "['xsuaa'][0] has no 'credentials' object", id="vcap-entry-malformed"),
        pytest.param(json.dumps({"VCAP_SERVICES": [SECRET]}), "is not a JSON object (found array)", id="vcap-not-object"),
    ],
)
def test_malformed_default_env_json(tmp_path: Path, content: str | bytes, expected: str) -> None:
    path = write(tmp_path / "default-env.json", content)
    with pytest.raises(ConfigurationError) as info:
        Bindings.from_env({}, cwd=tmp_path)
    message = str(info.value)
    assert expected in message
    assert str(path) in message
    assert_clean(message)


def test_load_default_env(tmp_path: Path) -> None:
    assert load_default_env(tmp_path) is None
    write(tmp_path / "default-env.json", '\ufeff{"destinations": [], "PORT": 5000}')  # a BOM is tolerated
    assert load_default_env(tmp_path) == {"destinations": [], "PORT": 5000}
    assert load_default_env(str(tmp_path)) == {"destinations": [], "PORT": 5000}


def test_load_default_env_unreadable(tmp_path: Path) -> None:
    (tmp_path / "default-env.json").mkdir()
    with pytest.raises(ConfigurationError, match="default-env.json cannot be read"):
        load_default_env(tmp_path)


# -- SERVICE_BINDING_ROOT (Kubernetes / Kyma) -------------------------------------------------------
def test_k8s_binding_folder_with_json_values_and_trailing_newlines(tmp_path: Path) -> None:
    root = tmp_path / "bindings"
    k8s_binding(root, "my-ias", {
        "type": "identity\n",
        "provider": "sap\n",
        "plan": "application\n",
        "tags": "ias, identity\n",
        "clientid": "ias-client\n",
        "clientsecret": SECRET + "\n",
        "url": "https://t.accounts.ondemand.com",
        "domains": '["accounts.ondemand.com", "accounts.cloud.sap"]\n',
        "authorization": '{"enabled": true}',
        "certificate": "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n\n",
        "not-json": "[this is text",
        ".hidden": "ignored",
    })
    b = Bindings.from_env({"SERVICE_BINDING_ROOT": str(root)}, cwd=tmp_path)
    assert b.sources == (f"SERVICE_BINDING_ROOT ({root})",)
    (ias,) = list(b)
    assert (ias.name, ias.label, ias.plan, ias.tags) == ("my-ias", "identity", "application", ("ias", "identity"))
    assert ias.source == f"SERVICE_BINDING_ROOT ({root / 'my-ias'})"
    assert ias.credentials == {
        "clientid": "ias-client",
        "clientsecret": SECRET,
        "url": "https://t.accounts.ondemand.com",
        "domains": ["accounts.ondemand.com", "accounts.cloud.sap"],
        "authorization": {"enabled": True},
        "certificate": "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n",  # only one newline stripped
        "not-json": "[this is text",
    }


@pytest.mark.parametrize(
    "tags, expected",
    [
        pytest.param('["a", "b"]', ("a", "b"), id="json-array"),
        pytest.param("a,b", ("a", "b"), id="comma"),
        pytest.param("a\nb\n", ("a", "b"), id="newline"),
        pytest.param(" a , ,b ", ("a", "b"), id="blanks-dropped"),
    ],
)
def test_k8s_tags_formats(tmp_path: Path, tags: str, expected: tuple[str, ...]) -> None:
    k8s_binding(tmp_path / "b", "x", {"type": "xsuaa", "tags": tags})
    (x,) = list(Bindings.from_env({"SERVICE_BINDING_ROOT": str(tmp_path / "b")}, cwd=tmp_path))
    assert x.tags == expected


def test_k8s_label_file_is_the_fallback_for_type(tmp_path: Path) -> None:
    k8s_binding(tmp_path / "b", "x", {"label": "xsuaa", "clientid": "c"})
    (x,) = list(Bindings.from_env({"SERVICE_BINDING_ROOT": str(tmp_path / "b")}, cwd=tmp_path))
    assert x.label == "xsuaa" and x.credentials == {"clientid": "c"} and x.plan is None


def test_k8s_secret_volume_symlink_farm(tmp_path: Path) -> None:
    """What kubelet writes: key -> ..data/key, ..data -> ..2024_01_01_xxx/ (hidden)."""
    root = tmp_path / "bindings"
    folder = root / "my-xsuaa"
    real = folder / "..2024_01_01_00_00_00.123"
    real.mkdir(parents=True)
    for key, value in {"type": "xsuaa", "clientid": "c", "clientsecret": SECRET}.items():
        write(real / key, value)
    os.symlink(real.name, folder / "..data")
    for key in ("type", "clientid", "clientsecret"):
        os.symlink(f"..data/{key}", folder / key)
    write(root / ".hidden-dir" / "type", "xsuaa")  # hidden binding folders are skipped
    write(root / "README", "a stray file in the root is not a binding")
    (x,) = list(Bindings.from_env({"SERVICE_BINDING_ROOT": str(root)}, cwd=tmp_path))
    assert (x.name, x.label) == ("my-xsuaa", "xsuaa")
    assert x.credentials == {"clientid": "c", "clientsecret": SECRET}


METADATA = {
    "metaDataProperties": [
        {"name": "instance_name", "format": "text"},
        {"name": "type", "format": "text"},
        {"name": "plan", "format": "text"},
        {"name": "tags", "format": "json"},
    ],
    "credentialProperties": [
        {"name": "clientid", "format": "text"},
        {"name": "clientsecret", "format": "text"},
        {"name": "domains", "format": "json"},
        {"name": "raw", "format": "text"},
    ],
}


def test_k8s_btp_operator_metadata_is_honoured(tmp_path: Path) -> None:
    k8s_binding(tmp_path / "b", "my-ias", {
        ".metadata": METADATA,
        "instance_name": "my-ias-instance",
        "type": "identity",
        "plan": "application",
        "tags": '["ias"]',
        "clientid": "ias-client",
        "clientsecret": SECRET,
        "domains": '["accounts.ondemand.com"]',
        "raw": '{"stays": "text"}',  # format text: not parsed even though it looks like JSON
        "unlisted": "not a listed credential",
    })
    (x,) = list(Bindings.from_env({"SERVICE_BINDING_ROOT": str(tmp_path / "b")}, cwd=tmp_path))
    assert (x.name, x.label, x.plan, x.tags) == ("my-ias", "identity", "application", ("ias",))
    assert x.credentials == {"clientid": "ias-client", "clientsecret": SECRET,
                             "domains": ["accounts.ondemand.com"], "raw": '{"stays": "text"}'}


def test_k8s_metadata_container_property_holds_all_credentials(tmp_path: Path) -> None:
    metadata = {"metaDataProperties": [{"name": "type", "format": "text"}],
                "credentialProperties": [{"name": "creds", "format": "json", "container": True}]}
    k8s_binding(tmp_path / "b", "my-xsuaa", {
        ".metadata": metadata, "type": "xsuaa",
        "creds": {"clientid": "c", "clientsecret": SECRET, "url": "https://x.example.com"},
    })
    (x,) = list(Bindings.from_env({"SERVICE_BINDING_ROOT": str(tmp_path / "b")}, cwd=tmp_path))
    assert x.label == "xsuaa"
    assert x.credentials == {"clientid": "c", "clientsecret": SECRET, "url": "https://x.example.com"}


def test_k8s_container_with_service_info_gives_the_label(tmp_path: Path) -> None:
    metadata = {"credentialProperties": [{"name": "all", "format": "json", "container": True}]}
    k8s_binding(tmp_path / "b", "svc", {".metadata": metadata,
                                        "all": {"clientid": "c", "type": "it-rt", "plan": "api"}})
    (x,) = list(Bindings.from_env({"SERVICE_BINDING_ROOT": str(tmp_path / "b")}, cwd=tmp_path))
    assert (x.label, x.plan) == ("it-rt", "api")


def test_cf_and_k8s_together_cf_first(tmp_path: Path) -> None:
    k8s_binding(tmp_path / "b", "k8s-xsuaa", {"type": "xsuaa", "clientid": "k"})
    b = Bindings.from_env({"VCAP_SERVICES": json.dumps({"xsuaa": [XSUAA]}), "SERVICE_BINDING_ROOT": str(tmp_path / "b")},
                          cwd=tmp_path)
    assert [x.name for x in b.find_all(label="xsuaa")] == ["my-xsuaa", "k8s-xsuaa"]
    assert b.sources == ("VCAP_SERVICES", f"SERVICE_BINDING_ROOT ({tmp_path / 'b'})")


def test_k8s_bindings_are_sorted_by_folder_name(tmp_path: Path) -> None:
    for name in ("zeta", "alpha", "mid"):
        k8s_binding(tmp_path / "b", name, {"type": "user-provided"})
    b = Bindings.from_env({"SERVICE_BINDING_ROOT": str(tmp_path / "b")}, cwd=tmp_path)
    assert [x.name for x in b] == ["alpha", "mid", "zeta"]


@pytest.mark.parametrize(
    "files, expected",
    [
        pytest.param({"clientsecret": SECRET}, "binding folder {folder} has no 'type' file", id="no-type"),
        pytest.param({"type": "\n", "clientsecret": SECRET}, "binding folder {folder} has no 'type' file", id="blank-type"),
        pytest.param({".metadata": "{nope", "type": "xsuaa"}, "{folder}/.metadata is not valid JSON (line 1 column 2)",
                     id="metadata-invalid-json"),
        pytest.param({".metadata": [1], "type": "xsuaa"}, "{folder}/.metadata is not a JSON object", id="metadata-not-object"),
        pytest.param({".metadata": {"credentialProperties": [{"format": "text"}]}, "type": "xsuaa"},
                     "{folder}/.metadata: credentialProperties[0] has no 'name'", id="metadata-property-no-name"),
        pytest.param({".metadata": {"credentialProperties": [{"name": "a", "format": "yaml"}]}, "type": "xsuaa", "a": "x"},
                     "credentialProperties[0] ('a') has format 'yaml'", id="metadata-bad-format"),
        pytest.param({".metadata": {"credentialProperties": {"name": "a"}}, "type": "xsuaa"},
                     "{folder}/.metadata: 'credentialProperties' is not an array", id="metadata-properties-not-array"),
        pytest.param({".metadata": METADATA, "type": "identity", "clientid": "c", "clientsecret": SECRET,
                      "domains": "[" + SECRET, "raw": "r"},
                     "{folder}/domains is not valid JSON (line 1 column 2)", id="json-property-invalid"),
        pytest.param({".metadata": METADATA, "type": "identity", "clientid": "c", "domains": "[]", "raw": "r"},
                     "{folder}/clientsecret is listed in {folder}/.metadata but missing", id="listed-file-missing"),
        pytest.param({".metadata": {"credentialProperties": [{"name": "all", "format": "json", "container": True}]},
                      "type": "xsuaa", "all": json.dumps([SECRET])},
                     "{folder}/all is not a JSON object (found array), but {folder}/.metadata marks it as container",
                     id="container-not-object"),
        pytest.param({"type": "xsuaa", "tags": '["a", 1]'}, "{folder}/tags is not an array of strings", id="tags-not-strings"),
        pytest.param({"type": "xsuaa", "tags": '["a"'}, "{folder}/tags is not valid JSON", id="tags-invalid-json"),
        pytest.param({"type": "xsuaa", "clientsecret": b"\xff\xfe" + SECRET.encode()},
                     "{folder}/clientsecret is not UTF-8 text", id="not-utf8"),
    ],
)
def test_malformed_k8s_binding(tmp_path: Path, files: dict[str, Any], expected: str) -> None:
    folder = k8s_binding(tmp_path / "b", "my-xsuaa", files)
    with pytest.raises(ConfigurationError) as info:
        Bindings.from_env({"SERVICE_BINDING_ROOT": str(tmp_path / "b")}, cwd=tmp_path)
    assert expected.format(folder=folder) in str(info.value)
    assert_clean(str(info.value))


@pytest.mark.parametrize("kind", [pytest.param("missing", id="missing"), pytest.param("file", id="a-file")])
def test_service_binding_root_must_be_a_directory(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "x"
    if kind == "file":
        write(root, "not a folder")
    with pytest.raises(ConfigurationError) as info:
        Bindings.from_env({"SERVICE_BINDING_ROOT": str(root)}, cwd=tmp_path)
    assert str(info.value) == f"SERVICE_BINDING_ROOT={root} does not exist or is not a directory"


# -- the collection and repr ---------------------------------------------------------------------
def test_constructed_bindings() -> None:
    a = Binding(name="a", label="xsuaa", credentials={"clientsecret": SECRET}, tags=("t",))
    b = Bindings([a], sources=["test"])
    assert list(b) == [a] and len(b) == 1 and b.sources == ("test",)
    assert b.find(tag="t") is a and Bindings().sources == ()


def test_repr_never_shows_credentials(tmp_path: Path) -> None:
    b = Bindings.from_env({"VCAP_SERVICES": json.dumps(VCAP)}, cwd=tmp_path)
    for binding in b:
        assert SECRET not in repr(binding)
        assert "credentials" not in repr(binding)
    assert SECRET not in repr(b)
    assert "my-xsuaa" in repr(b)
    k = Binding(name="k", label="identity", credentials={"key": KEY})
    assert "PRIVATE-KEY-VALUE" not in repr(k)
