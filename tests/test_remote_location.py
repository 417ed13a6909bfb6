"""The remote's URL and switches: what is accepted, and what is refused without ever
repeating a credential."""

from __future__ import annotations

import pytest

from klingflow.cache.bucket import reason
from klingflow.cache.location import RemoteSettings, remote_settings
from klingflow.errors import EXIT_INVALID, UsageError

HINT = ("credentials come from the environment only: AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY (s3://), GOOGLE_APPLICATION_CREDENTIALS (gs://), "
        "AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_KEY (az://)")
EXPECTED = ("s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, az://CONTAINER/PREFIX, "
            "file:///ABSOLUTE/PATH or memory://")


@pytest.mark.parametrize(("url", "scheme"), [
    ("s3://team-bucket/klingflow", "s3"), ("gs://team-bucket", "gs"),
    ("az://container/prefix", "az"), ("file:///srv/cache", "file"), ("memory://", "memory")])
def test_supported_remotes(url, scheme) -> None:
    assert remote_settings({"KLINGFLOW_REMOTE": url}) == RemoteSettings(url, scheme, False)


def test_the_option_wins_over_the_environment_and_no_remote_is_none() -> None:
    env = {"KLINGFLOW_REMOTE": "s3://env-bucket/x"}
    assert remote_settings(env, url="gs://option/y") == RemoteSettings("gs://option/y", "gs")
    assert remote_settings({}) is None
    assert remote_settings({"KLINGFLOW_REMOTE": "  "}) is None


@pytest.mark.parametrize(("env", "option", "read_only"), [
    ({}, False, False), ({}, True, True), ({"KLINGFLOW_REMOTE_READ_ONLY": "1"}, False, True),
    ({"KLINGFLOW_REMOTE_READ_ONLY": "true"}, False, True),
    ({"KLINGFLOW_REMOTE_READ_ONLY": "0"}, False, False),
    ({"KLINGFLOW_REMOTE_READ_ONLY": "0"}, True, True)])
def test_read_only_from_the_option_or_the_environment(env, option, read_only) -> None:
    env = {"KLINGFLOW_REMOTE": "s3://b/p", **env}
    settings = remote_settings(env, read_only=option)
    assert settings is not None and settings.read_only is read_only


def test_a_read_only_switch_that_is_not_a_boolean_is_refused() -> None:
    with pytest.raises(UsageError) as error:
        remote_settings({"KLINGFLOW_REMOTE": "s3://b/p", "KLINGFLOW_REMOTE_READ_ONLY": "maybe"})
    assert str(error.value) == ("KLINGFLOW_REMOTE_READ_ONLY: 'maybe' is not one of 1, 0, true, "
                                "false, yes, no")


@pytest.mark.parametrize(("url", "message"), [
    ("s3://AKIAEXAMPLEKEY:wJalrXUtnFEMIsecret@team-bucket/klingflow",
     f"KLINGFLOW_REMOTE: s3://team-bucket/klingflow must not hold a user name or password; {HINT}"),
    ("s3://AKIAEXAMPLEKEY@team-bucket/klingflow",
     f"KLINGFLOW_REMOTE: s3://team-bucket/klingflow must not hold a user name or password; {HINT}"),
    ("az://container/prefix?sv=2024&sig=c2VjcmV0c2lnbmF0dXJl",
     "KLINGFLOW_REMOTE: az://container/prefix must not hold a query string (it may be a "
     f"signature or a key); {HINT}"),
    ("gs://bucket/p?wJalrXUtnFEMIsecret", "KLINGFLOW_REMOTE: gs://bucket/p must not hold a "
     f"query string (it may be a signature or a key); {HINT}"),
    ("s3://bucket/p#wJalrXUtnFEMIsecret", "KLINGFLOW_REMOTE: s3://bucket/p must not hold a "
     f"query string (it may be a signature or a key); {HINT}"),
    ("https://bucket.s3.amazonaws.com/p", "KLINGFLOW_REMOTE: https://bucket.s3.amazonaws.com/p "
     f"is not a supported remote; expected {EXPECTED}"),
    ("team-bucket/klingflow", f"KLINGFLOW_REMOTE: the value is not a URL; expected {EXPECTED}"),
    ("s3:///prefix", "KLINGFLOW_REMOTE: s3:///prefix names no bucket; expected "
     "s3://BUCKET/PREFIX"),
    ("file://relative/cache", "KLINGFLOW_REMOTE: file://relative/cache is not an absolute file "
     "URL; expected file:///ABSOLUTE/PATH (three slashes)"),
])
def test_bad_urls_are_refused_without_repeating_a_secret(url, message) -> None:
    with pytest.raises(UsageError) as error:
        remote_settings({"KLINGFLOW_REMOTE": url})
    assert str(error.value) == message
    assert error.value.exit_code == EXIT_INVALID
    assert "AKIAEXAMPLEKEY" not in str(error.value)
    assert "secret" not in str(error.value).replace("SECRET_ACCESS_KEY", "")
    assert "c2VjcmV0c2lnbmF0dXJl" not in str(error.value)


def test_the_option_is_named_when_it_is_the_bad_one() -> None:
    with pytest.raises(UsageError) as error:
        remote_settings({}, url="ftp://host/x")
    assert str(error.value) == ("--remote: ftp://host/x is not a supported remote; expected "
                                f"{EXPECTED}")


def test_a_store_error_is_told_without_credentials(monkeypatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMIsecret")
    error = RuntimeError(
        "Generic S3 error: Error performing PUT https://user:pw@host/b/k?X-Amz-Signature=abc "
        "in 5ms - Server returned non-2xx status code: 403 Forbidden: <?xml version=\"1.0\"?>"
        "<Error>wJalrXUtnFEMIsecret</Error>\nDebug source: wJalrXUtnFEMIsecret")
    assert reason(error) == ("Generic S3 error: Error performing PUT https://host/b/k in 5ms - "
                             "Server returned non-2xx status code: 403 Forbidden")
    assert reason(RuntimeError("signed with wJalrXUtnFEMIsecret")) == "signed with ***"
