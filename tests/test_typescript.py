"""The TypeScript SDK (src/typescript) and the API contract, through the real tools:
npm installs the pinned generator, `buf generate` makes the code from protos/, `tsc
--strict` compiles it with the Console helper and the example, and the example console
runs against a real server; `buf lint` and `buf breaking` against the contract image."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from assigncore.client import Connection, Portal, Supervisor
from assigncore.v1 import common_pb2 as pb

from .server_harness import ADMIN, INTAKE, live_server, rep_token, until
from .tcp_proxy import Proxy

ROOT = Path(__file__).resolve().parent.parent
TS = ROOT / "src" / "typescript"
pytestmark = pytest.mark.timeout(600)


def npm(*args: str, cwd: Path = TS) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["npm", *args], cwd=cwd, capture_output=True, text=True, timeout=500, check=False
    )
    assert done.returncode == 0, f"npm {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def built() -> Path:
    """The SDK installed from its lock file, generated and compiled (tsc --strict)."""
    assert shutil.which("npm"), "the TypeScript SDK's tests need Node.js 20+ and npm"
    npm("install", "--no-audit", "--no-fund")  # from package-lock.json
    npm("run", "generate")
    npm("run", "build")
    return TS


async def test_the_typescript_example_console_accepts_and_ends_what_a_portal_started(built):
    live = await live_server()
    proxy = await Proxy(live.port).start()
    portal = Portal(Connection(f"127.0.0.1:{live.port}", token=INTAKE))
    example = await asyncio.create_subprocess_exec(
        "node",
        "dist/examples/console.js",
        cwd=built,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=os.environ
        | {
            "ASSIGNCORE_URL": f"http://{proxy.address}",
            "ASSIGNCORE_TOKEN": rep_token("ann"),
            "ASSIGNCORE_SESSIONS": "3",
        },
    )
    lines: list[dict[str, str]] = []

    async def read() -> None:
        assert example.stdout is not None
        async for raw in example.stdout:
            lines.append(json.loads(raw))

    reader = asyncio.get_running_loop().create_task(read())
    hub = live.server.runtime.hub
    try:
        started = []
        gone = None  # the stream the last cut ended (the server may not know it yet)
        for _ in range(3):
            await until(lambda gone=gone: hub.stream_of("ann") not in (None, gone), 30)
            session = await portal.start(pb.Customer(name="Carol"), issue_type="general-help")
            started.append(session.session.id)
            await until(lambda: {"ended": started[-1]} in lines, 30)
            gone = hub.stream_of("ann")
            proxy.cut()  # the example reconnects and resumes
        assert await asyncio.wait_for(example.wait(), 30) == 0
        await reader
        assert [line["accepted"] for line in lines if "accepted" in line] == started
        assert [line["ended"] for line in lines if "ended" in line] == started
        sequences = [int(line["sequence"]) for line in lines if "sequence" in line]
        sequences = [s for s in sequences if s]  # the welcome's is where the feed resumes
        assert sequences == sorted(set(sequences)), "an event twice or out of order"
        async with Connection(f"127.0.0.1:{live.port}", token=ADMIN) as conn:
            for session_id in started:
                reply = await Supervisor(conn).inspect(session_id)
                assert reply.session.state == pb.SESSION_STATE_ENDED
                assert reply.session.end_reason == pb.END_REASON_COMPLETED
    finally:
        if example.returncode is None:
            example.kill()
            await example.wait()
        reader.cancel()
        await portal.connection.close()
        await proxy.close()
        await live.close()


def test_the_protos_lint_clean_and_keep_the_v1_contract(built):
    npm("run", "lint:protos")
    npm("run", "breaking")


def test_a_renumbered_or_removed_field_breaks_the_contract(built, tmp_path):
    """The check can fail: a copy of protos/ with a field renumbered, then one with a
    field removed, is refused against the contract image."""
    buf = str(built / "node_modules" / ".bin" / "buf")
    image = ROOT / "protos" / "contract" / "assigncore-v1.binpb"
    for old, new in (
        ("  string owner_id = 2;", "  string owner_id = 3;"),
        ("  string owner_id = 2;", ""),
    ):
        copy = tmp_path / f"protos-{len(new)}"
        shutil.copytree(ROOT / "protos", copy)
        common = copy / "assigncore" / "v1" / "common.proto"
        text = common.read_text()
        assert old in text
        common.write_text(text.replace(old, new, 1))
        done = subprocess.run(
            [buf, "breaking", "--against", str(image)],
            cwd=copy,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode != 0 and "owner_id" in done.stdout, done.stdout + done.stderr
