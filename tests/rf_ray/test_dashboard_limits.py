"""What the dashboard reads of a request and what it echoes back (issue 21, items 17 and 4).

- A body past 1 MiB is refused (413) before it is read whole: a declared ``Content-Length`` at
  once, a chunked body as soon as it passes the cap. (A 200 MB clone body used to be read whole,
  then echoed back in the error.)
- Error messages are cut; integers past 64 bits in the path or the query answer 400 (they were
  a 500, ``OverflowError``); ``Authorization: bearer`` is accepted in any case (RFC 7235).
- Clone changes that give a function field as text answer 400 before any process starts (the
  page used to answer 500 for ``reward_funcs``), and the clone form is told which params are
  read-only.

Real server (uvicorn, loopback), real sockets; no Ray: the experiment is written by hand.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from rf_ray import ops
from rf_ray.dashboard.app import Settings
from rf_ray.dashboard.guard import CSRF_HEADER, Guard
from rf_ray.dashboard.limits import MAX_BODY, MAX_MESSAGE
from rf_ray.dashboard.reads import Root
from tests.rf_ray.test_dashboard_http import make_experiment, page_session, serve

TIMEOUT = 60


@pytest.fixture
def base(tmp_path: Path) -> Iterator[str]:
    make_experiment(tmp_path, "sweep")
    with serve(Settings(root=Root.at(tmp_path))) as url:
        yield url


def _raw(base: str, head: str, body_parts: list[bytes]) -> str:
    """Send ``head`` and the body parts on a raw socket (no more than that: the request may be
    unfinished) and return the status line of the answer."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
        sock.sendall(head.encode())
        for part in body_parts:
            try:
                sock.sendall(part)
            except (BrokenPipeError, ConnectionResetError):  # refused mid-body: fine
                break
        answer = sock.recv(65536).decode(errors="replace")
    return answer.split("\r\n", 1)[0]


def _clone_head(base: str, extra: str) -> str:
    session, csrf = page_session(base)
    cookie = "; ".join(f"{k}={v}" for k, v in session.cookies.items())
    return (
        "POST /api/experiments/sweep/runs/1/clone HTTP/1.1\r\n"
        f"Host: {base.removeprefix('http://')}\r\nCookie: {cookie}\r\n"
        f"{CSRF_HEADER}: {csrf}\r\nContent-Type: application/json\r\n{extra}\r\n"
    )


def test_a_declared_body_past_the_cap_is_refused_before_it_is_sent(base):
    # 200 MB announced, 16 bytes sent: a server that read bodies whole would wait for the rest.
    head = _clone_head(base, "Content-Length: 209715200\r\n")
    assert _raw(base, head, [b'{"changes": {"le']) == "HTTP/1.1 413 Request Entity Too Large"


def test_a_chunked_body_is_refused_once_it_passes_the_cap(base):
    piece = b"x" * 65536
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    count = MAX_BODY // len(piece) + 2  # just past the cap; the last chunk is never sent
    head = _clone_head(base, "Transfer-Encoding: chunked\r\n")
    assert _raw(base, head, [chunk] * count) == "HTTP/1.1 413 Request Entity Too Large"


def test_a_function_field_given_as_text_is_400_and_its_value_is_not_echoed(base):
    session, csrf = page_session(base)
    text = "lambda x: x" + " " * 600_000  # under the cap, far over what an error may echo
    for field in ("formatting_func", "reward_funcs", "compute_metrics", "eval_metrics_fn"):
        got = session.post(
            f"{base}/api/experiments/sweep/runs/1/clone",
            headers={CSRF_HEADER: csrf},
            json={"changes": {field: text}},
            timeout=TIMEOUT,
        )
        assert got.status_code == 400, got.text[:500]
        assert field in got.json()["error"]
        assert len(got.text) < MAX_MESSAGE + 100


def test_the_clone_form_shows_function_fields_read_only(base):
    got = requests.get(f"{base}/api/experiments/sweep/runs/1/params", timeout=TIMEOUT).json()
    assert set(ops.function_fields()) <= set(got["read_only"])
    assert {"formatting_func", "reward_funcs", "compute_metrics", "eval_metrics_fn"} <= set(
        got["read_only"]
    )


@pytest.mark.parametrize(
    "path",
    [
        "/api/experiments/sweep/runs/99999999999999999999999/params",
        "/api/experiments/sweep?steps_after=99999999999999999999999",
        "/api/experiments/sweep?chunks_after=-1",
        "/api/experiments/sweep?runs_after=nan",
    ],
)
def test_out_of_range_numbers_are_400(base, path):
    got = requests.get(base + path, timeout=TIMEOUT)
    assert got.status_code == 400
    assert "must be" in got.json()["error"]


@pytest.mark.parametrize("run_id", ["9" * 5000, "0" * 5000 + "1"])
def test_a_run_id_past_pythons_4300_digits_is_read_not_a_500(base, run_id):
    # int() refuses such text (ValueError): Starlette's int converter answered 500.
    got = requests.get(f"{base}/api/experiments/sweep/runs/{run_id}/params", timeout=TIMEOUT)
    leading_zeros = run_id.startswith("0")
    assert got.status_code == (200 if leading_zeros else 400), got.text[:300]
    session, csrf = page_session(base)
    op = session.post(
        f"{base}/api/experiments/sweep/runs/{run_id}/stop", headers={CSRF_HEADER: csrf},
        timeout=TIMEOUT,
    )  # fmt: skip
    assert op.status_code == (409 if leading_zeros else 400), op.text[:300]  # 409: finished


@pytest.mark.parametrize(
    "body", ["[" * 200_000, '{"changes": {"learning_rate": "' + "[" * 100_000 + '"}}',
             '{"changes": {"learning_rate": "' + "1" * 5000 + '"}}'],
)  # fmt: skip
def test_json_python_cannot_read_is_not_a_500(base, body):
    # The body nested past the recursion limit, or a change whose text is such JSON or an
    # integer past 4300 digits (the form's text is parsed as the command line parses it).
    session, csrf = page_session(base)
    got = session.post(
        f"{base}/api/experiments/sweep/runs/1/clone",
        headers={CSRF_HEADER: csrf, "Content-Type": "application/json"}, data=body,
        timeout=TIMEOUT,
    )  # fmt: skip
    assert got.status_code in (400, 409), got.text[:300]  # 409: the experiment is finished
    assert "internal error" not in got.text


def test_an_out_of_range_run_id_in_an_op_is_400(base):
    session, csrf = page_session(base)
    got = session.post(
        f"{base}/api/experiments/sweep/runs/{2**64}/stop", headers={CSRF_HEADER: csrf}, timeout=60
    )
    assert got.status_code == 400
    assert "run id" in got.json()["error"]


def test_a_long_header_is_not_echoed_whole(base):
    session, csrf = page_session(base)
    origin = "http://" + "e" * 6000 + ".example"
    got = session.post(
        f"{base}/api/experiments/sweep/runs/1/stop",
        headers={CSRF_HEADER: csrf, "Origin": origin},
        timeout=TIMEOUT,
    )
    assert got.status_code == 403
    assert len(got.json()["error"]) < 500


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_bearer_scheme_is_case_insensitive(tmp_path, scheme):
    make_experiment(tmp_path, "sweep")
    token = "t0ken-for-this-test"
    with serve(Settings(root=Root.at(tmp_path), guard=Guard(access_token=token))) as base:
        got = requests.get(
            base + "/api/experiments", headers={"Authorization": f"{scheme} {token}"}, timeout=60
        )
        assert got.status_code == 200
        wrong = requests.get(
            base + "/api/experiments", headers={"Authorization": f"{scheme} nope"}, timeout=60
        )
        assert wrong.status_code == 401
