"""The serving workload as a real child process: a tiny Llama, two real LoRA adapters, a real
VectorIndex in PostgreSQL + pgvector (built by the index pipeline with the real MiniLM), the
exchange log in that database. No mocks.

Three server processes start together at the beginning of the module (two cores: startup is mostly
imports), and every test shares them:

- `rag`: both adapters, retrieval and the exchange log on a live database;
- `plain`: both adapters on a 4-bit (nf4) base, no retrieval, the exchange log pointed at a dead
  port, the OpenAI routes also under KSERVE_OPENAI_ROUTE_PREFIX;
- `bad_sha`: an altered adapter, which must stop the server at startup.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from substrate.controlplane import free_port
from tunerag_workloads.contract import WorkloadError
from tunerag_workloads.retrieval import Chunk
from tunerag_workloads.serve.artifacts import fetch_adapter
from tunerag_workloads.serve.config import AdapterRef, ServeConfig, load_config, masker
from tunerag_workloads.serve.engine import load_engine
from tunerag_workloads.serve.feedback import FeedbackLog
from tunerag_workloads.serve.rag import build_prompt
from workloads import finetune_fixtures as ff
from workloads import serve_fixtures as sf

PASSWORD = "hunter2-not-for-logs"
QUESTION = "Which moons orbit Jupiter?"  # answered only by web/astronomy.html
EF_SEARCH = 120  # the rag server's efSearch: neither pgvector's default (40) nor tunerag's (100)
PROBES = 7  # and its probes: neither pgvector's default (1) nor tunerag's (10)
PROMPTS = ["count : one two", "color of apple ?", "the cat sat on"]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, postgres: Any, minilm: Any, index_kit: Any) -> Iterator[SimpleNamespace]:
    from tunerag_workloads.index import run_index

    root = tmp_path_factory.mktemp("serve")
    base = ff.cached_model()
    adapters = [{"name": name, "uri": f"file://{root / name}", "sha256": sf.make_adapter(base, root / name, seed)}
                for name, seed in (("qa-v1", 1), ("qa-v2", 2))]
    tampered = root / "tampered"
    sha = sf.make_adapter(base, tampered, 3)
    (tampered / "adapter_config.json").write_text((tampered / "adapter_config.json").read_text().replace('"r": 8', '"r": 8 '))
    dead_url = f"postgresql://tunerag:{PASSWORD}@127.0.0.1:{free_port()}/gone"
    logs = root / "logs"

    servers = SimpleNamespace(
        plain=sf.Server("plain", sf.serve_config(base, adapters, loadIn4bit=True, feedback={"table": "exchanges"}),
                        free_port(), logs, env={"TUNERAG_DATABASE_URL": dead_url, "TUNERAG_FEEDBACK_RETRY_SECONDS": "1",
                             "KSERVE_OPENAI_ROUTE_PREFIX": "openai"}),
        bad_sha=sf.Server("bad_sha", sf.serve_config(base, [adapters[0], {"name": "qa-v3", "uri": f"file://{tampered}",
                                                                            "sha256": sha}]), free_port(), logs),
    )
    for server in vars(servers).values():
        server.start()
    try:
        servers.db_name = db_name = f"t_serve_{uuid.uuid4().hex[:8]}"
        db = postgres.create_database(db_name)
        run_index(index_kit.index_spec(index_kit.write_corpus(root / "docs")), db_uri=db, model=minilm)
        retrieval = {"schema": "public", "table": "docs", "topK": 2, "efSearch": EF_SEARCH, "probes": PROBES, "hybrid": False,
                     "promptTemplate": "Context:\n{context}\n\nQuestion: {question}\nAnswer:"}
        # The server's sessions log every statement, with its parameters, to the server's log.
        logged = db + "?" + urllib.parse.urlencode({"options": "-c log_statement=all"}, quote_via=urllib.parse.quote)
        servers.rag = sf.Server("rag", sf.serve_config(base, adapters, retrieval=retrieval,
                                                       feedback={"schema": "serving", "table": "exchanges"}),
                                free_port(), logs, env={"TUNERAG_DATABASE_URL": logged}).start()
        servers.pg_log = postgres.log_path
        servers.db, servers.admin = db, postgres.uri
        servers.db_password = str(conninfo_to_dict(db)["password"])
        yield servers
    finally:
        for server in vars(servers).values():
            if isinstance(server, sf.Server):
                server.stop()
        if hasattr(servers, "db_name"):
            postgres.drop_database(servers.db_name)


@pytest.fixture(scope="module")
def rag(fleet: SimpleNamespace) -> Any:
    return fleet.rag.ready()


@pytest.fixture(scope="module")
def plain(fleet: SimpleNamespace) -> Any:
    return fleet.plain.ready()


def complete(client: Any, model: str | None, prompt: str, **extra: Any) -> dict[str, Any]:
    body = {"prompt": prompt, **extra} | ({"model": model} if model is not None else {})
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    return dict(response.json())


# ------------------------------------------------------------------------------ startup failures

def test_altered_adapter_stops_startup_with_its_reason(fleet: SimpleNamespace) -> None:
    assert fleet.bad_sha.wait_exit() == 2
    last = fleet.bad_sha.stderr_path.read_text().strip().splitlines()[-1]
    assert last.startswith("error: AdapterChecksumMismatch: adapter qa-v3: the sha256 of file://"), last


def test_adapter_for_another_base_model_is_refused(tmp_path: Path) -> None:
    """In this process (the exit path is the one above): adapters of a deeper and of a narrower
    model, which peft would load silently or fail on with a long trace."""
    base = ff.cached_model()
    for name, shape in (("qa-deeper", {"layers": 3}), ("qa-narrower", {"hidden": 32})):
        other = ff.build_model(tmp_path / f"{name}-base", pretrain_steps=0, **shape)
        ref = AdapterRef(name=name, uri=f"file://{tmp_path / name}", sha256=sf.make_adapter(other, tmp_path / name, 4))
        config = ServeConfig.model_validate(sf.serve_config(base, [ref.model_dump()]))
        with pytest.raises(WorkloadError) as refused:
            load_engine(config, [fetch_adapter(ref, tmp_path)], tmp_path)
        assert refused.value.reason == "AdapterIncompatible" and name in refused.value.message


def test_bad_configuration_is_refused_before_loading_anything(tmp_path: Path) -> None:
    env = sf.child_env(TUNERAG_SERVE_CONFIG=json.dumps({"namespace": "ns", "service": "qa", "baseModel": "/no-scheme"}))
    done = subprocess.run([sys.executable, "-m", "tunerag_workloads.serve"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: InvalidConfig: TUNERAG_SERVE_CONFIG is invalid: baseModel")

    base = {"namespace": "ns", "service": "qa", "baseModel": "file:///m"}
    with pytest.raises(WorkloadError, match="TUNERAG_DATABASE_URL") as missing:
        load_config({"TUNERAG_SERVE_CONFIG": json.dumps({**base, "feedback": {}})})
    assert missing.value.reason == "DatabaseUrlMissing"
    with pytest.raises(WorkloadError, match="reserved"):
        load_config({"TUNERAG_SERVE_CONFIG": json.dumps({**base, "adapters": [{"name": "base", "uri": "file:///a", "sha256": "0" * 64}]})})
    with pytest.raises(WorkloadError, match="table"):
        load_config({"TUNERAG_SERVE_CONFIG": json.dumps({**base, "retrieval": {"table": "Robert'); DROP TABLE"}}), "TUNERAG_DATABASE_URL": "x"})
    config, url, port = load_config({"TUNERAG_SERVE_CONFIG": json.dumps(base)})
    assert (config.default_adapter, url, port, config.generation.max_new_tokens) == ("base", None, 8080, 64)
    with pytest.raises(WorkloadError) as absent:
        fetch_adapter(AdapterRef(name="qa-v9", uri=f"file://{tmp_path}/nothing", sha256="0" * 64), tmp_path)
    assert absent.value.reason == "AdapterNotFound"
    mask = masker(f"postgresql://user:{PASSWORD}@db:5432/x?sslmode=require")
    assert PASSWORD not in mask(f"failed: postgresql://user:{PASSWORD}@db:5432/x?sslmode=require and {PASSWORD}")


def test_full_log_queue_drops_and_template_fills_once() -> None:
    dropped: list[int] = []
    log = FeedbackLog(f"postgresql://u:{PASSWORD}@127.0.0.1:{free_port()}/x", "public", "t", on_drop=dropped.append,
                      mask=masker(None), queue_size=2)
    for _ in range(3):  # the writer thread is not started: the queue fills
        log.log_feedback(str(uuid.uuid4()), "positive", None)
    assert dropped == [1]
    log.close(0.1)  # what is still queued at shutdown is counted too
    assert sum(dropped) == 3

    chunk = Chunk(id=1, document="a.md", chunk_index=0, content=" says {question} literally \n", score=0.5)
    assert build_prompt("C: {context} Q: {question} {other}", "why {context}?", [chunk]) == \
        "C: [a.md]\nsays {question} literally Q: why {context}? {other}"


# ------------------------------------------------------------------------------------- the server

def test_ready_live_and_model_status(rag: Any) -> None:
    assert rag.get("/v2/health/ready").json() == {"ready": True}
    assert rag.get("/v2/health/live").status_code == 200
    assert rag.get("/v1/models/qa").json() == {"name": "qa", "ready": True}
    assert rag.get("/v1/models/other").status_code == 404
    listed = rag.get("/v1/models").json()
    assert [(m["id"], m["root"]) for m in listed["data"]] == [("qa", "qa-v1"), ("qa-v1", "qa-v1"), ("qa-v2", "qa-v2"), ("base", "base")]
    assert listed["models"] == ["qa"]


def test_v1_predict(rag: Any) -> None:
    response = rag.post("/v1/models/qa:predict", json={"instances": [
        {"prompt": QUESTION}, {"question": QUESTION, "adapter": "qa-v2"}, {"prompt": QUESTION, "adapter": "base"}]})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["adapterVersion"] for p in predictions] == ["qa-v1", "qa-v2", "base"]
    assert len({p["text"] for p in predictions}) == 3
    for p in predictions:
        uuid.UUID(p["exchangeId"])
        assert p["chunks"][0]["document"] == "web/astronomy.html"
    assert rag.post("/v1/models/nope:predict", json={"instances": [{"prompt": "x"}]}).status_code == 404
    assert rag.post("/v1/models/qa:predict", json={"instances": [{"prompt": "x", "adapter": "qa-v7"}]}).status_code == 404
    assert rag.post("/v1/models/qa:predict", json={"instances": [{"adapter": "qa-v1"}]}).status_code == 400


@pytest.mark.parametrize("server", ["plain", "rag"])
def test_completions_choose_the_adapter_by_model(server: str, request: pytest.FixtureRequest) -> None:
    client = request.getfixturevalue(server)
    texts: dict[str, list[str]] = {}
    for model in ("qa-v1", "qa-v2", "base", "qa", None):
        answers = [complete(client, model, prompt) for prompt in PROMPTS]
        assert {a["tunerag"]["adapterVersion"] for a in answers} == {"qa-v1" if model in ("qa", None) else model}
        assert all(a["object"] == "text_completion" and a["usage"]["completion_tokens"] >= 1 for a in answers)
        texts[str(model)] = [a["choices"][0]["text"] for a in answers]
    assert texts["qa"] == texts["None"] == texts["qa-v1"]  # the service name is the default adapter
    assert texts["qa-v1"] != texts["qa-v2"] and texts["base"] not in (texts["qa-v1"], texts["qa-v2"])
    assert [complete(client, "qa-v2", p)["choices"][0]["text"] for p in PROMPTS] == texts["qa-v2"]  # greedy: stable

    unknown = client.post("/v1/completions", json={"model": "qa-v9", "prompt": "x"})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found" and "qa-v9" in unknown.json()["error"]["message"]


def test_chat_completions_use_the_chat_template(rag: Any, plain: Any) -> None:
    messages = [{"role": "system", "content": "answer briefly"}, {"role": "user", "content": "color of apple ?"}]
    replies = {}
    for model in ("qa-v1", "qa-v2", "base"):
        response = plain.post("/v1/chat/completions", json={"model": model, "messages": messages})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["object"] == "chat.completion" and body["choices"][0]["message"]["role"] == "assistant"
        assert body["tunerag"]["adapterVersion"] == model
        replies[model] = body["choices"][0]["message"]["content"]
    assert len(set(replies.values())) == 3
    prefixed = plain.post("/openai/v1/chat/completions", json={"model": "qa-v2", "messages": messages})
    assert prefixed.json()["choices"][0]["message"]["content"] == replies["qa-v2"]  # KSERVE_OPENAI_ROUTE_PREFIX
    cited = rag.post("/v1/chat/completions", json={"model": "qa-v2", "messages": [{"role": "user", "content": QUESTION}]}).json()
    assert cited["tunerag"]["chunks"][0]["document"] == "web/astronomy.html"
    assert plain.post("/v1/chat/completions", json={"model": "nope", "messages": messages}).status_code == 404
    assert plain.post("/v1/chat/completions", json={"messages": [{"role": "system", "content": "x"}]}).status_code == 400


def test_concurrent_requests_for_different_adapters_do_not_mix(plain: Any) -> None:
    expected = {m: complete(plain, m, PROMPTS[0])["choices"][0]["text"] for m in ("qa-v1", "qa-v2", "base")}
    got: list[tuple[str, str]] = []

    def ask(model: str) -> None:
        got.append((model, complete(plain, model, PROMPTS[0])["choices"][0]["text"]))

    threads = [threading.Thread(target=ask, args=(m,)) for m in ["qa-v1", "qa-v2", "base"] * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(got) == 12 and all(text == expected[model] for model, text in got)


def test_metrics_count_by_adapter_version(rag: Any) -> None:
    before = sf.metrics(rag)
    for model in ("qa-v2", "qa-v2", "base"):
        complete(rag, model, QUESTION)
    rag.post("/v1/chat/completions", json={"model": "qa-v2", "messages": [{"role": "user", "content": QUESTION}]})
    after = sf.metrics(rag)

    def delta(name: str, **labels: str) -> float:
        return sf.value(after, name, namespace="ns", service="qa", **labels) - sf.value(before, name, namespace="ns", service="qa", **labels)

    assert delta("tunerag_serve_requests_total", adapter_version="qa-v2", endpoint="completions", outcome="ok") == 2
    assert delta("tunerag_serve_requests_total", adapter_version="base", endpoint="completions", outcome="ok") == 1
    assert delta("tunerag_serve_requests_total", adapter_version="qa-v2", endpoint="chat_completions", outcome="ok") == 1
    assert delta("tunerag_serve_requests_total", adapter_version="qa-v1", endpoint="completions") == 0
    assert sf.value(after, "tunerag_serve_requests_total", adapter_version="qa-v1", endpoint="predict", outcome="error") == 0
    assert delta("tunerag_serve_request_seconds_count", adapter_version="qa-v2", endpoint="completions") == 2
    assert delta("tunerag_serve_request_seconds_bucket", adapter_version="qa-v2", endpoint="completions", le="60.0") == 2
    assert delta("tunerag_serve_tokens_total", adapter_version="qa-v2", direction="in") > 50  # the retrieved context
    assert delta("tunerag_serve_tokens_total", adapter_version="qa-v2", direction="out") >= 3
    assert delta("tunerag_serve_retrieval_seconds_count") == 4
    assert sf.value(after, "tunerag_serve_feedback_log_dropped_total") == 0
    assert sf.value(after, "tunerag_serve_feedback_total", adapter_version="qa-v1", label="negative") >= 0


def test_retrieval_cites_the_only_document_that_answers(rag: Any, fleet: SimpleNamespace) -> None:
    answer = complete(rag, "qa-v1", QUESTION)
    chunks = answer["tunerag"]["chunks"]
    assert len(chunks) == 2 and chunks[0]["document"] == "web/astronomy.html"
    assert chunks[0]["score"] >= chunks[1]["score"]
    with psycopg.connect(fleet.db) as conn:
        row = conn.execute("SELECT document, chunk_index, metadata FROM public.docs WHERE id = %s", [chunks[0]["id"]]).fetchone()
    assert row is not None and (row[0], row[1]) == (chunks[0]["document"], chunks[0]["chunkIndex"])
    assert chunks[0]["headingPath"] == row[2]["headingPath"] and chunks[0]["headingPath"][0] == "The moons of Jupiter"


def logged_transactions(log: str) -> list[list[str]]:
    """The committed transactions of the sessions that log their statements (log_statement=all),
    each as its statements, a statement's parameters appended to it."""
    open_: dict[str, list[str]] = {}
    done: list[list[str]] = []
    for line in log.splitlines():
        found = re.match(r"\S+ \S+ \S+ \[(\d+)\] (LOG|DETAIL):  (.*)", line)
        if found is None:
            continue
        pid, kind, text = found.groups()
        if kind == "DETAIL":
            if text.startswith("Parameters: ") and open_.get(pid):
                open_[pid][-1] += " -- " + text
        elif text.startswith(("execute ", "statement: ")):
            statement = text.split(": ", 1)[1]
            if statement == "BEGIN":
                open_[pid] = []
            elif statement == "COMMIT":
                done.append(open_.pop(pid, []))
            elif pid in open_:
                open_[pid].append(statement)
    return done


def setting_set_by(statement: str, name: str = "hnsw.ef_search") -> int | None:
    """The value a logged `set_config('<name>', $n, ...)` set, from its parameters."""
    found = re.search(rf"set_config\('{re.escape(name)}', \$(\d+), true\).* -- Parameters: (.*)", statement)
    value = re.search(rf"\${found.group(1)} = '(\d+)'", found.group(2)) if found else None
    return int(value.group(1)) if value else None


def test_retrieval_runs_with_the_configured_ef_search(rag: Any, fleet: SimpleNamespace) -> None:
    """Every query on the index's view runs in a transaction that set hnsw.ef_search to efSearch
    and ivfflat.probes to probes first (read from the server's own statements in PostgreSQL's log). On this corpus of a few
    chunks the planner reads every row, so no setting changes the answer here;
    test_retrieval_scale.py shows what ef_search changes once the index answers."""
    def searches() -> list[list[str]]:
        return [t for t in logged_transactions(fleet.pg_log.read_text(errors="replace"))
                if any('FROM "public"."docs"' in s for s in t)]

    before = len(searches())
    answer = complete(rag, "qa-v1", QUESTION)
    assert answer["tunerag"]["chunks"][0]["document"] == "web/astronomy.html"
    after = searches()
    assert len(after) > before, after  # this request's
    for statements in after:
        query = next(i for i, s in enumerate(statements) if 'FROM "public"."docs"' in s)
        assert [ef for ef in map(setting_set_by, statements[:query]) if ef is not None] == [EF_SEARCH], statements
        probes = [setting_set_by(st, "ivfflat.probes") for st in statements[:query]]
        assert [p for p in probes if p is not None] == [PROBES], statements


def wait_for_row(db: str, exchange_id: str, column: str = "exchange_id", timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(db) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
                row = cur.execute("SELECT * FROM serving.exchanges WHERE exchange_id = %s", [exchange_id]).fetchone()
                if row is not None and row[column] is not None:
                    return dict(row)
        except psycopg.errors.UndefinedTable:
            pass
        assert time.monotonic() < deadline, f"no {column} for exchange {exchange_id} in {timeout} s"
        time.sleep(0.2)


def test_exchange_log_and_feedback_land_in_postgres(rag: Any, fleet: SimpleNamespace) -> None:
    answer = complete(rag, "qa-v2", QUESTION)
    exchange = answer["tunerag"]["exchangeId"]
    before = sf.metrics(rag)
    posted = rag.post("/v1/feedback", json={"exchangeId": exchange, "label": "positive", "comment": "cites Galileo"})
    assert posted.status_code == 202, posted.text
    row = wait_for_row(fleet.db, exchange, "feedback_label")
    assert (row["namespace"], row["service"], row["adapter_version"], row["endpoint"]) == ("ns", "qa", "qa-v2", "completions")
    assert row["question"] == QUESTION and row["answer"] == answer["choices"][0]["text"]
    assert row["prompt"].startswith("Context:\n[web/astronomy.html]\n") and "Question: Which moons orbit Jupiter?\nAnswer:" in row["prompt"]
    assert "Galileo" in row["prompt"] or "Jupiter" in row["prompt"]
    assert row["chunk_ids"] == [c["id"] for c in answer["tunerag"]["chunks"]]
    assert row["chunk_documents"] == [c["document"] for c in answer["tunerag"]["chunks"]]
    assert row["latency_ms"] > 0 and row["created_at"] is not None
    assert (row["feedback_label"], row["feedback_comment"]) == ("positive", "cites Galileo") and row["feedback_at"] >= row["created_at"]
    after = sf.metrics(rag)
    assert (sf.value(after, "tunerag_serve_feedback_total", adapter_version="qa-v2", label="positive")
            - sf.value(before, "tunerag_serve_feedback_total", adapter_version="qa-v2", label="positive")) == 1

    predicted = rag.post("/v1/models/qa:predict", json={"instances": [{"question": QUESTION, "adapter": "base"}]}).json()
    logged = wait_for_row(fleet.db, predicted["predictions"][0]["exchangeId"])
    assert (logged["adapter_version"], logged["endpoint"], logged["feedback_label"]) == ("base", "predict", None)

    assert rag.post("/v1/feedback", json={"exchangeId": exchange, "label": "meh"}).status_code == 400
    assert rag.post("/v1/feedback", json={"exchangeId": "not-a-uuid", "label": "negative"}).status_code == 400


def test_database_down_is_a_503_and_the_server_recovers(rag: Any, fleet: SimpleNamespace) -> None:
    def allow(on: bool) -> None:
        with psycopg.connect(fleet.admin, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(sql.Identifier(fleet.db_name), sql.Literal(on)))
            if not on:
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [fleet.db_name])

    before = sf.metrics(rag)
    allow(False)
    try:
        down = rag.post("/v1/completions", json={"model": "qa-v1", "prompt": QUESTION})
        assert rag.get("/v2/health/live").status_code == 200
    finally:
        allow(True)
    assert down.status_code == 503, down.text
    error = down.json()["error"]
    assert error["code"] == "DatabaseUnavailable" and "unreachable" in error["message"]
    assert fleet.db_password not in down.text and fleet.db not in down.text
    after = sf.metrics(rag)
    assert (sf.value(after, "tunerag_serve_requests_total", adapter_version="qa-v1", endpoint="completions", outcome="error")
            - sf.value(before, "tunerag_serve_requests_total", adapter_version="qa-v1", endpoint="completions", outcome="error")) == 1
    back = complete(rag, "qa-v1", QUESTION)
    assert back["tunerag"]["chunks"][0]["document"] == "web/astronomy.html"
    wait_for_row(fleet.db, back["tunerag"]["exchangeId"])  # the log reconnected too


def test_dead_log_database_never_fails_a_request(plain: Any, fleet: SimpleNamespace) -> None:
    before = sf.value(sf.metrics(plain), "tunerag_serve_feedback_log_dropped_total")
    exchanges = [complete(plain, "qa-v1", p)["tunerag"]["exchangeId"] for p in PROMPTS]
    assert plain.post("/v1/feedback", json={"exchangeId": exchanges[0], "label": "negative"}).status_code == 202
    deadline = time.monotonic() + 30
    while (dropped := sf.value(sf.metrics(plain), "tunerag_serve_feedback_log_dropped_total") - before) < 4:
        assert time.monotonic() < deadline, f"only {dropped} log entries dropped"
        time.sleep(0.3)
    samples = sf.metrics(plain)
    assert sf.value(samples, "tunerag_serve_feedback_total", adapter_version="qa-v1", label="negative") >= 1
    assert sf.value(samples, "tunerag_serve_requests_total", outcome="error") == 0
    output = fleet.plain.output()
    assert "(nf4)" in output and "feedback log: database unreachable" in output and PASSWORD not in output


def test_sigterm_shuts_down_gracefully(fleet: SimpleNamespace, plain: Any, rag: Any) -> None:
    fleet.plain.terminate()
    fleet.rag.terminate()
    for server in (fleet.plain, fleet.rag):
        assert server.stop() == 0, server.output()[-2000:]
        assert "Finished server process" in server.output()
    assert fleet.db_password not in fleet.rag.output()
