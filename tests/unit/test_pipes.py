"""Vacuum pipes: the document's validation (every problem named by URL and JSON path) and
the loader's expansion of ``[vacuum_pipe SPACE PREFIX]`` from the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cloudvac.config import load_config_dir
from cloudvac.config.ini import read_files
from cloudvac.config.pipecache import PipeState, pipe_sections, url_hash
from cloudvac.config.pipes import PipeError, parse_pipe
from cloudvac.engine.pipes import RETRY_SECONDS, PipeFetcher

URL = "https://pipes.example.org/vo/belle.pipe?token=abc123"
SHOWN = "https://pipes.example.org/vo/belle.pipe?…"
EXAMPLE = {  # VCycle's/Vac's example.pipe shape, plus a second entry and placeholders
    "cache_seconds": 1800,
    "machinetypes": [
        {"suffix": "prod", "machine_model": "cernvm3", "min_wallclock_seconds": 9000,
         "max_wallclock_seconds": 86400, "max_processors": 8, "backoff_seconds": 600,
         "fizzle_seconds": 600, "target_share": 3.0, "root_image": "AlmaLinux-9",
         "user_data": "builtin:generic", "heartbeat_file": "heartbeat",
         "heartbeat_seconds": 900, "user_data_option_queue": "long",
         "user_data_file_hostcert": "hostcert.pem", "cvmfs_repositories": "belle.cern.ch"},
        {"suffix": "test", "target_share": 1, "max_wallclock_seconds": 3600},
        {"suffix": "docker", "machine_model": "docker", "docker_image": "x"},
    ],
}


def doc(**top: object) -> bytes:
    return json.dumps(top).encode()


def test_a_good_document_gives_machinetype_options() -> None:
    pipe = parse_pipe(json.dumps(EXAMPLE).encode(), URL, "belle")
    assert pipe.cache_seconds == 1800
    assert [mt.suffix for mt in pipe.machinetypes] == ["prod", "test"]
    prod = pipe.machinetypes[0]
    assert prod.target_share == 3.0
    assert prod.options["max_wallclock_seconds"] == "86400"
    assert prod.options["user_data_option_queue"] == "long"
    assert prod.options["cvmfs_repositories"] == "belle.cern.ch"
    assert "min_wallclock_seconds" not in prod.options  # Vac's, ignored
    assert "machine_model" not in prod.options
    assert pipe.skipped == ("docker (machine_model docker)",)
    assert pipe.template_urls == []


BAD = [
    # id, document, the JSON path, words of the message
    ("not-json", b'{"machinetypes": [', "$", "not JSON"),
    ("not-object", b"[]", "$", "expected an object"),
    ("no-list", doc(cache_seconds=3), "$.machinetypes", "missing"),
    ("unknown-top", doc(machinetypes=[], machintypes=[]), "$.machintypes",
     "did you mean 'machinetypes'"),
    ("bad-cache", doc(cache_seconds="1h", machinetypes=[]), "$.cache_seconds", "whole number"),
    ("unknown-key", doc(machinetypes=[{"suffix": "a", "fizle_seconds": 3}]),
     "$.machinetypes[0].fizle_seconds", "did you mean 'fizzle_seconds'"),
    ("wrong-type", doc(machinetypes=[{"suffix": "a"}, {"suffix": "b", "backoff_seconds": "x"}]),
     "$.machinetypes[1].backoff_seconds", "valid integer"),
    ("bool-for-int", doc(machinetypes=[{"suffix": "a", "fizzle_seconds": True}]),
     "$.machinetypes[0].fizzle_seconds", "valid integer"),
    ("negative", doc(machinetypes=[{"suffix": "a", "target_share": -1}]),
     "$.machinetypes[0].target_share", "greater than or equal to 0"),
    ("no-suffix", doc(machinetypes=[{"target_share": 1}]), "$.machinetypes[0].suffix",
     "missing"),
    ("bad-suffix", doc(machinetypes=[{"suffix": "Prod_1"}]), "$.machinetypes[0].suffix",
     "a-z, 0-9 and '-'"),
    ("twice", doc(machinetypes=[{"suffix": "a"}, {"suffix": "a"}]),
     "$.machinetypes[1].suffix", "given twice"),
    ("too-long", doc(machinetypes=[{"suffix": "a" * 30}]), "$.machinetypes[0].suffix",
     "too long"),
    ("user-data-path", doc(machinetypes=[{"suffix": "a", "user_data": "/etc/shadow"}]),
     "$.machinetypes[0].user_data", "never a path on this host"),
    ("user-data-relative", doc(machinetypes=[{"suffix": "a", "user_data": "../x"}]),
     "$.machinetypes[0].user_data", "builtin:NAME or an https:// URL"),
    ("user-data-http", doc(machinetypes=[{"suffix": "a", "user_data": "http://x.org/u"}]),
     "$.machinetypes[0].user_data", "https:// URL"),
    ("root-image-path", doc(machinetypes=[{"suffix": "a", "root_image": "/../images/x"}]),
     "$.machinetypes[0].root_image", "no '/'"),
    ("heartbeat-path", doc(machinetypes=[{"suffix": "a", "heartbeat_file": "../../x"}]),
     "$.machinetypes[0].heartbeat_file", "bare file name"),
    ("file-path", doc(machinetypes=[{"suffix": "a", "user_data_file_key": "/etc/ssh/key"}]),
     "$.machinetypes[0].user_data_file_key", "not a path"),
    ("option-name", doc(machinetypes=[{"suffix": "a", "user_data_option_X-Y": "1"}]),
     '$.machinetypes[0]."user_data_option_X-Y"', "a-z, 0-9 and '_'"),
    ("option-object", doc(machinetypes=[{"suffix": "a", "user_data_option_x": {"a": 1}}]),
     "$.machinetypes[0].user_data_option_x", "expected text"),
    ("proxy", doc(machinetypes=[{"suffix": "a", "user_data_proxy": True}]),
     "$.machinetypes[0].user_data_proxy", "not supported"),
    ("repository", doc(machinetypes=[{"suffix": "a", "cvmfs_repositories": ["/cvmfs/x"]}]),
     "$.machinetypes[0].cvmfs_repositories", "repository names"),
    ("entry-not-object", doc(machinetypes=["prod"]), "$.machinetypes[0]",
     "expected an object"),
    ("too-big", b" " * (1 << 20) + b"{}", "$", "larger than"),
]


@pytest.mark.parametrize(("data", "path", "words"), [b[1:] for b in BAD],
                         ids=[b[0] for b in BAD])
def test_every_bad_value_is_named_by_url_and_json_path(data: bytes, path: str,
                                                        words: str) -> None:
    with pytest.raises(PipeError) as caught:
        parse_pipe(data, URL, "belle")
    found = [p for p in caught.value.problems if p.startswith(f"{path}: ") and words in p]
    assert found, caught.value.problems
    assert str(caught.value).startswith(f"{SHOWN}: ")
    assert "abc123" not in str(caught.value)  # the query may carry a token


def test_all_problems_of_a_document_are_reported_at_once() -> None:
    data = doc(machinetypes=[{"suffix": "a", "fizzle_seconds": -1, "bogus": 1},
                             {"suffix": "b", "user_data": "/x"}], extra=1)
    with pytest.raises(PipeError) as caught:
        parse_pipe(data, URL)
    assert len(caught.value.problems) == 4, caught.value.problems
    assert "and 1 more" in str(caught.value)


# ---- the loader's expansion, from a prepared cache -------------------------------------

SPACE = """\
[settings]
state_dir = {state}

[space s.example]
api = sim
flavor_names = m1.small

[machinetype s.example local]
target_share = 1
"""
PIPE = """
[vacuum_pipe s.example belle]
vacuum_pipe_url = {url}
target_share = 8
max_starting_seconds = 1200
"""


def configure(tmp_path: Path, extra: str = "", url: str = URL) -> Path:
    cdir = tmp_path / "conf"
    cdir.mkdir(parents=True, exist_ok=True)
    (cdir / "10-s.conf").write_text(SPACE.format(state=tmp_path / "state")
                                    + PIPE.format(url=url) + extra)
    return cdir


def cache(tmp_path: Path, body: bytes | None, url: str = URL, **state: float | str) -> Path:
    """Put ``body`` (the last good document) and a state in the pipe's cache."""
    where = tmp_path / "state" / "pipes" / "s.example" / "belle"
    where.mkdir(parents=True, exist_ok=True)
    if body is not None:
        (where / f"pipe-{url_hash(url)}.json").write_bytes(body)
    (where / f"pipe-{url_hash(url)}.state.json").write_text(
        PipeState.model_validate({"url": url, **state}).model_dump_json())
    return where


def test_pipe_machinetypes_with_shares_and_precedence(tmp_path: Path) -> None:
    local = "\n[machinetype s.example belle-test]\nmax_wallclock_seconds = 7200\n"
    cdir = configure(tmp_path, local)
    where = cache(tmp_path, json.dumps(EXAMPLE).encode(), fetched_at=1.0, checked_at=1.0)
    loaded = load_config_dir(cdir)
    assert loaded.issues == [] and loaded.warnings == []
    mts = loaded.spaces["s.example"].machinetypes
    assert sorted(mts) == ["belle-prod", "belle-test", "local"]
    prod, test = mts["belle-prod"], mts["belle-test"]
    assert (prod.target_share, test.target_share) == (6.0, 2.0)  # 8 split 3:1
    assert prod.max_starting_seconds == test.max_starting_seconds == 1200  # the section's
    assert prod.max_wallclock_seconds == 86400 and prod.backoff_seconds == 600
    assert test.max_wallclock_seconds == 7200  # the local section wins over the pipe
    assert prod.user_data_options == {"queue": "long"}
    assert prod.user_data_files == {"hostcert": where / "files" / "hostcert.pem"}
    assert prod.cvmfs_repositories == ["belle.cern.ch"]
    assert loaded.sources["s.example"] == {cdir / "10-s.conf"}


def test_section_options_override_the_document_and_shares_split_equally(
        tmp_path: Path) -> None:
    cdir = configure(tmp_path, "")
    text = (cdir / "10-s.conf").read_text().replace("max_starting_seconds = 1200",
                                                    "backoff_seconds = 60")
    (cdir / "10-s.conf").write_text(text)
    cache(tmp_path, doc(machinetypes=[{"suffix": "a", "backoff_seconds": 5},
                                      {"suffix": "b"}]), fetched_at=1.0)
    mts = load_config_dir(cdir).spaces["s.example"].machinetypes
    assert mts["belle-a"].backoff_seconds == mts["belle-b"].backoff_seconds == 60
    assert mts["belle-a"].target_share == mts["belle-b"].target_share == 4.0


def test_https_user_data_points_at_the_cached_template(tmp_path: Path) -> None:
    cdir = configure(tmp_path)
    template = "https://pipes.example.org/vo/user_data"
    where = cache(tmp_path, doc(machinetypes=[{"suffix": "a", "user_data": template}]),
                  fetched_at=1.0)
    loaded = load_config_dir(cdir)
    assert "belle-a" not in loaded.spaces["s.example"].machinetypes
    assert any("not in the cache" in i.message for i in loaded.issues), loaded.issues
    (where / "templates").mkdir()
    (where / "templates" / url_hash(template)).write_text("#cloud-config\n")
    mt = load_config_dir(cdir).spaces["s.example"].machinetypes["belle-a"]
    assert mt.user_data == str(where / "templates" / url_hash(template))


def test_failing_pipe_keeps_its_cached_definition_with_a_warning(tmp_path: Path) -> None:
    cdir = configure(tmp_path)
    cache(tmp_path, json.dumps(EXAMPLE).encode(), fetched_at=1_700_000_000.0,
          checked_at=1_700_000_900.0, failing_since=1_700_000_600.0, error="HTTP 404 Not Found")
    loaded = load_config_dir(cdir)
    assert loaded.issues == []
    assert "belle-prod" in loaded.spaces["s.example"].machinetypes
    [warning] = loaded.warnings
    assert warning.option == "vacuum_pipe_url" and warning.location.line == 12
    assert f"{SHOWN} failing since 2023-11-14 22:23:20 UTC: HTTP 404" in warning.message
    assert "fetched at 2023-11-14 22:13:20 UTC" in warning.message
    assert "abc123" not in str(warning)


@pytest.mark.parametrize(("failing", "words"), [
    (False, "not fetched yet"),
    (True, "cannot be fetched since 1970-01-01 00:00:05 UTC: cannot fetch: ConnectError"),
])
def test_no_good_definition_is_an_error_for_that_pipe_only(
        tmp_path: Path, failing: bool, words: str) -> None:
    cdir = configure(tmp_path)
    if failing:
        cache(tmp_path, None, error="cannot fetch: ConnectError: refused", failing_since=5.0)
    loaded = load_config_dir(cdir)
    assert sorted(loaded.spaces["s.example"].machinetypes) == ["local"]
    [issue] = loaded.issues
    assert (issue.location.file, issue.location.line) == (cdir / "10-s.conf", 12)
    assert issue.section == "vacuum_pipe s.example belle" and issue.option == "vacuum_pipe_url"
    assert words in issue.message and "machinetypes are absent" in issue.message


def test_a_cached_document_that_no_longer_validates_is_an_error(tmp_path: Path) -> None:
    cdir = configure(tmp_path)
    cache(tmp_path, doc(machinetypes=[{"suffix": "a", "user_data": "/etc/passwd"}]))
    loaded = load_config_dir(cdir)
    [issue] = loaded.issues
    assert "$.machinetypes[0].user_data" in issue.message and "absent" in issue.message


def test_a_changed_url_does_not_serve_the_old_pipes_document(tmp_path: Path) -> None:
    cache(tmp_path, json.dumps(EXAMPLE).encode(), fetched_at=1.0)
    loaded = load_config_dir(configure(tmp_path, url="https://other.example.org/p.json"))
    assert sorted(loaded.spaces["s.example"].machinetypes) == ["local"]
    assert "not fetched yet" in loaded.issues[0].message


SECTION_PROBLEMS = [
    ("vacuum_pipe_url = http://pipes.example.org/p\n", 2, "vacuum_pipe_url", "https://"),
    ("vacuum_pipe_url = https://user:pw@pipes.example.org/p\n", 2, "vacuum_pipe_url",
     "without user:password@"),
    ("target_share = 1\n", 1, "vacuum_pipe_url", "required option is missing"),
    (f"vacuum_pipe_url = {URL}\ntarget_share = lots\n", 3, "target_share", "a number"),
    (f"vacuum_pipe_url = {URL}\nvacuum_pipe_refresh_minutes = 0\n", 3,
     "vacuum_pipe_refresh_minutes", "at least 1"),
    (f"vacuum_pipe_url = {URL}\nbackof_seconds = 1\n", 3, "backof_seconds",
     "did you mean 'backoff_seconds'"),
    (f"vacuum_pipe_url = {URL}\nname = x\n", 3, "name", "unknown option"),
]


@pytest.mark.parametrize(("body", "line", "option", "words"), SECTION_PROBLEMS)
def test_section_problems_are_located(tmp_path: Path, body: str, line: int, option: str,
                                      words: str) -> None:
    cdir = tmp_path / "conf"
    cdir.mkdir()
    (cdir / "10-s.conf").write_text(SPACE.format(state=tmp_path / "state"))
    (cdir / "20-pipe.conf").write_text(f"[vacuum_pipe s.example belle]\n{body}")
    loaded = load_config_dir(cdir)
    found = [i for i in loaded.issues if i.option == option and words in i.message]
    assert found, [str(i) for i in loaded.issues]
    assert (found[0].location.file, found[0].location.line) == (cdir / "20-pipe.conf", line)
    assert "s.example" in loaded.spaces  # the space carries on without the pipe


@pytest.mark.parametrize("header", ["[vacuum_pipe s.example]", "[vacuum_pipe ../x belle]",
                                    "[vacuum_pipe s.example Bad_Prefix]"])
def test_bad_section_headers(tmp_path: Path, header: str) -> None:
    cdir = tmp_path / "conf"
    cdir.mkdir()
    (cdir / "10-s.conf").write_text(SPACE.format(state=tmp_path / "state")
                                    + f"\n{header}\nvacuum_pipe_url = {URL}\n")
    loaded = load_config_dir(cdir)
    assert [i.location.line for i in loaded.issues] == [11], [str(i) for i in loaded.issues]
    assert not (tmp_path / "state").exists()


def test_http_is_accepted_only_on_loopback(tmp_path: Path) -> None:
    for url, ok in [("http://127.0.0.1:8000/p", True), ("http://[::1]/p", True),
                    ("http://localhost/p", True), ("http://10.0.0.1/p", False),
                    ("ftp://127.0.0.1/p", False)]:
        cdir = configure(tmp_path / url.replace("/", "_").replace(":", "_"), url=url)
        pipes = pipe_sections(read_files(sorted(cdir.glob("*.conf"))))
        assert bool(pipes) is ok, url


def test_refresh_is_due_after_the_period_and_sooner_after_a_failure(tmp_path: Path) -> None:
    cdir = configure(tmp_path)
    [pipe] = pipe_sections(read_files(sorted(cdir.glob("*.conf"))))
    fetcher = PipeFetcher(clock=lambda: 0.0)
    assert fetcher.due(pipe, None, 0.0)
    good = PipeState(url=URL, checked_at=1000.0, fetched_at=1000.0, cache_seconds=1800)
    assert not fetcher.due(pipe, good, 1000.0 + 1799)
    assert fetcher.due(pipe, good, 1000.0 + 1800)  # the document's cache_seconds
    assert fetcher.due(pipe, good, 999.0)  # the clock went back
    bad = good.model_copy(update={"error": "HTTP 500", "failing_since": 1000.0})
    assert not fetcher.due(pipe, bad, 1000.0 + RETRY_SECONDS - 1)
    assert fetcher.due(pipe, bad, 1000.0 + RETRY_SECONDS)
    text = (cdir / "10-s.conf").read_text() + "vacuum_pipe_refresh_minutes = 120\n"
    (cdir / "10-s.conf").write_text(text)
    [pipe] = pipe_sections(read_files(sorted(cdir.glob("*.conf"))))
    assert not fetcher.due(pipe, good, 1000.0 + 7199)  # the section's option wins
    assert fetcher.due(pipe, good, 1000.0 + 7200)
