"""The shared state backend against moto's S3 server: locks, history, budget, self-test."""

from __future__ import annotations

import threading
import uuid

import pytest

from engine.errors import LockHeld
from engine.model.results import Status, StepResult
from engine.record.state import open_history, state_url
from engine.record.state.budget import SharedBudget
from engine.record.state.s3lock import S3Lock, break_lock, hold, lock_status
from engine.record.state.s3store import S3Store, StateError, parse_state_url
from engine.secrets import Scrubber, Secret


@pytest.fixture
def store(moto_s3):
    import boto3

    bucket = f"state-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=moto_s3).create_bucket(Bucket=bucket)
    return S3Store(parse_state_url(f"s3://{bucket}/prod?endpoint_url={moto_s3}"))


def test_state_urls():
    assert state_url("") is None and state_url("local") is None
    url = parse_state_url("s3://b/a/b?endpoint_url=http://127.0.0.1:9&region=eu-west-1")
    assert (url.bucket, url.prefix, url.endpoint_url, url.region) == ("b", "a/b", "http://127.0.0.1:9", "eu-west-1")
    with pytest.raises(StateError, match="must be an s3://bucket/prefix URL"):
        state_url("/tmp/state")
    with pytest.raises(StateError, match="unknown parameter 'endpoint'"):
        state_url("s3://b/p?endpoint=x")


def _part(store, run, part, *, total=2, ttl=None):
    """One part of a sharded run takes its lock as its process does (`hold`): [lease, lock]."""
    return hold(store, ["web"], run_id=run, part=part, playbook="pb.yml", total=total, ttl=ttl)


def _release(taken, *, ended_ok):
    for held in taken:
        held.release(ended_ok=ended_ok)


def test_a_lost_race_names_the_holder_and_the_same_run_shares_the_lock(store, monkeypatch):
    monkeypatch.setenv("CI_JOB_URL", "https://gitlab.example.com/ops/deploy/-/jobs/42")
    first = _part(store, "r1", "s1of2")
    sibling = _part(store, "r1", "s2of2")  # the other shard of the same run joins
    with pytest.raises(LockHeld) as exc:
        S3Lock(store, "web", run_id="r2", part="run", playbook="other.yml").acquire()
    said = str(exc.value)
    assert "run r1" in said and "since 20" in said and "runner https://gitlab.example.com/ops/deploy/-/jobs/42" in said
    with pytest.raises(LockHeld, match="part s1of2 of run r1 is already running"):
        _part(store, "r1", "s1of2")
    _release(first, ended_ok=False)  # a failed shard: its resume starts at once
    again = _part(store, "r1", "s1of2")
    _release(again, ended_ok=True)
    _release(sibling, ended_ok=True)
    with pytest.raises(LockHeld, match="run r1"):  # the run holds it until its coordinator ends it
        S3Lock(store, "web", run_id="r2", part="run", playbook="other.yml").acquire()
    _release(_part(store, "r1", "coord"), ended_ok=True)
    assert lock_status(store, "web") is None


def test_racing_runs_get_one_lock(store):
    locks = [S3Lock(store, "web", run_id=f"r{i}", part="run", playbook="pb.yml") for i in range(6)]
    won, lost = [], []
    start = threading.Barrier(len(locks))

    def take(lock):
        start.wait()
        try:
            lock.acquire()
            won.append(lock)
        except LockHeld:
            lost.append(lock)

    threads = [threading.Thread(target=take, args=(lock,)) for lock in locks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(lost) == 5
    won[0].release()


def test_an_expired_lease_is_taken_over_and_break_removes_any(store):
    S3Lock(store, "web", run_id="dead", part="run", playbook="pb.yml", ttl=-1).acquire()  # its lease is over
    alive = S3Lock(store, "web", run_id="next", part="run", playbook="pb.yml")
    alive.acquire()
    assert lock_status(store, "web")["run_id"] == "next"
    assert break_lock(store, "web")["run_id"] == "next"
    assert lock_status(store, "web") is None
    alive.release()  # its lock was broken: nothing to release, nothing raised


def test_a_store_ignoring_conditional_writes_is_refused(moto_s3):
    import boto3

    from tests.harness.s3strip import StrippingProxy

    bucket = f"state-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=moto_s3).create_bucket(Bucket=bucket)
    with StrippingProxy(moto_s3) as proxy:
        store = S3Store(parse_state_url(f"s3://{bucket}/p?endpoint_url={proxy.endpoint}"))
        with pytest.raises(StateError, match="ignores conditional writes"):
            S3Lock(store, "web", run_id="r1", part="run", playbook="pb.yml").acquire()
        assert proxy.dropped >= 2
        assert store.list("") == []  # the probe is gone, no lock was written


def _result(step, host, status=Status.CHANGED, outputs=None):
    return StepResult(step, host, status, "done", outputs=outputs or {})


def test_history_is_readable_from_another_machine_and_scrubbed(store):
    scrub = Scrubber()
    scrub.add(Secret("hunter2-password", scrubber=None))
    url = f"s3://{store.url.bucket}/{store.url.prefix}?endpoint_url={store.url.endpoint_url}"
    hist = open_history(url, "/nonexistent")
    hist.start_run(run_id="r1.s1of2", playbook="pb.yml", name="pb", mode="run", release_id="REL")
    hist.add_result("r1.s1of2", _result("sync", "web1", outputs={"token": "hunter2-password"}), scrub.scrub_obj)
    hist.finish_run("r1.s1of2", 0, "ok")
    hist.close()
    other = open_history(url, "/nonexistent")  # a new process elsewhere: only the bucket in common
    [rec] = other.runs("pb")
    assert (rec.run_id, rec.status, rec.release_id) == ("r1.s1of2", "ok", "REL")
    [res] = other.results(other.run("r1").run_id)  # a prefix finds the run, as in SQLite
    assert res["step"] == "sync" and "hunter2" not in str(res)


def test_concurrent_index_appends_lose_nothing(store):
    def start(i):
        h = open_history(f"s3://{store.url.bucket}/{store.url.prefix}?endpoint_url={store.url.endpoint_url}", "")
        h.start_run(run_id=f"r{i}", playbook="pb.yml", name="pb", mode="run", release_id="REL")
        h.finish_run(f"r{i}", 0, "ok")
        h.close()

    threads = [threading.Thread(target=start, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    hist = open_history(f"s3://{store.url.bucket}/{store.url.prefix}?endpoint_url={store.url.endpoint_url}", "")
    assert sorted(r.run_id for r in hist.runs(limit=100)) == [f"r{i}" for i in range(8)]
    assert {r.status for r in hist.runs(limit=100)} == {"ok"}


def test_one_budget_for_every_shard(store):
    shards = [SharedBudget(store, "r1", {"web": 10}) for _ in range(4)]
    threads = [
        threading.Thread(target=b.record_failure, args=("web", f"web{i}{j}"))
        for i, b in enumerate(shards)
        for j in (0, 1)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert shards[0].failed() == {"web": (8, 10)}


def test_state_is_a_playbook_and_inventory_setting(tmp_path):
    from engine.errors import PlaybookError
    from engine.load.inventory import load_inventory
    from engine.load.playbook import load_playbook

    steps = "steps:\n  - {id: s, module: command, fleet: controller, args: {argv: ['true']}}\n"
    good = tmp_path / "pb.yml"
    good.write_text("state: s3://acme-deploy-state/smartweb\n" + steps)
    assert load_playbook(str(good)).state == "s3://acme-deploy-state/smartweb"
    inv = tmp_path / "inv.yml"
    inv.write_text("state: local\nhosts: {}\n")
    assert load_inventory(str(inv)).state == "local"
    bad = tmp_path / "bad.yml"
    bad.write_text("state: /var/lib/playbook\n" + steps)
    with pytest.raises(PlaybookError) as exc:
        load_playbook(str(bad))
    assert "bad.yml:1" in str(exc.value) and "state" in str(exc.value)


def test_a_budget_spent_in_one_shard_stops_the_others(store):
    from engine.execute.scheduler import Executor, RunOptions
    from engine.execute.shard import assign
    from tests.engine.execute.test_scheduler import Fleet_, cmd, inventory, playbook

    inv = inventory(8)
    shard_of = assign(inv.hosts, 2)
    first = sorted(h for h, s in shard_of.items() if s == 1)
    second = sorted(h for h, s in shard_of.items() if s == 2)
    pb = playbook([cmd("a", argv=["deploy"])], serial=1, max_fail_percentage=20)  # 2 of 8 hosts: spent

    def shard(hosts, failing):
        fleet = Fleet_(inv, fail={"deploy": set(failing)})
        opts = RunOptions(
            mode="run", forks=1, run_id="r1", only_hosts=frozenset(hosts), budget=SharedBudget(store, "r1", {"web": 8})
        )
        summary = Executor(pb, inv, opts, connect=fleet.connect).execute()
        ran = [h for h, c in fleet.conns.items() if any(cmd[0] == "deploy" for cmd in c.commands)]
        return summary, ran

    one, _ = shard(first, first[:1])  # 1 of 8 failed: within the budget
    assert one.aborted is None
    two, ran = shard(second, second[:1])  # its own first failure makes 2 of 8, for the whole fleet
    assert two.aborted and "2 of 8 hosts failed" in two.aborted
    assert ran == second[:1]  # no new batch started after it
    again, ran = shard(first, [])  # a shard starting now starts nothing
    assert again.aborted and ran == []


def test_requests_per_run_stay_few(store):
    store.self_test()
    before = store.requests
    lock = S3Lock(store, "web", run_id="r1", part="run", playbook="pb.yml")
    lock.acquire()
    lock.release()
    assert store.requests - before == 2  # create, delete
    hist = open_history(f"s3://{store.url.bucket}/{store.url.prefix}?endpoint_url={store.url.endpoint_url}", "")
    hist.store = store  # count on this store
    before = dict(store.by_kind)
    hist.start_run(run_id="r1", playbook="pb.yml", name="pb", mode="run", release_id="REL")
    hist.finish_run("r1", 0, "ok")
    hist.close()
    # read + CAS write at the start; at the end a CAS write on the ETag the start's write returned
    assert store.by_kind["index"] - before.get("index", 0) == 3


def test_a_history_write_that_loses_its_cas_reads_again_and_keeps_both(store):
    hist = open_history(f"s3://{store.url.bucket}/{store.url.prefix}?endpoint_url={store.url.endpoint_url}", "")
    other = open_history(f"s3://{store.url.bucket}/{store.url.prefix}?endpoint_url={store.url.endpoint_url}", "")
    from engine.record.state import s3history

    hist.store = store
    hist.start_run(run_id="r1", playbook="pb.yml", name="pb", mode="run", release_id="REL1")
    mine = dict(s3history._KNOWN)  # what hist's machine remembers of the index
    other.start_run(run_id="r2", playbook="pb.yml", name="pb", mode="run", release_id="REL2")  # moves the ETag
    s3history._KNOWN.update(mine)  # hist's machine did not see that write
    before = store.by_kind["index"]
    hist.finish_run("r1", 0, "ok")  # its remembered ETag is stale now: 412, then read and retry
    assert store.by_kind["index"] - before == 3
    other.finish_run("r2", 1, "failed")
    hist.close()
    other.close()
    runs = {r.run_id: r.status for r in hist.runs("pb", limit=10)}
    assert runs == {"r1": "ok", "r2": "failed"}


def test_a_lease_is_renewed_and_a_broken_lock_is_not_retaken(store):
    lock = S3Lock(store, "web", run_id="r1", part="run", playbook="pb.yml", ttl=600)
    lock.acquire()
    first = lock_status(store, "web")["holders"]["run"]["expires"]
    lock.renew()
    assert lock_status(store, "web")["holders"]["run"]["expires"] > first
    break_lock(store, "web")
    lock.renew()  # the operator broke it: the run does not take it back
    assert lock_status(store, "web") is None
    lock.release()


def test_lock_status_and_break_from_the_command_line(store, tmp_path, capsys):
    from engine.cli import main

    (tmp_path / "inv.yml").write_text("hosts: {web1: {connection: local}}\ngroups: {web: {hosts: [web1]}}\n")
    (tmp_path / "pb.yml").write_text(
        "fleets: {web: {hosts: web}}\nsteps:\n  - {id: s, module: command, fleet: web, args: {argv: ['true']}}\n"
    )
    url = f"s3://{store.url.bucket}/{store.url.prefix}?endpoint_url={store.url.endpoint_url}"
    argv = [str(tmp_path / "pb.yml"), "-i", str(tmp_path / "inv.yml"), "--state", url]
    S3Lock(store, "web", run_id="r7", part="run", playbook="pb.yml").acquire()
    assert main(["lock", "status", *argv]) == 0
    assert "web: held by" in capsys.readouterr().out
    assert main(["lock", "release", *argv]) == 1  # a live lease is kept without break
    assert "has a live lease" in capsys.readouterr().out
    assert main(["lock", "break", *argv]) == 0
    assert "web: broken (was " in capsys.readouterr().out and lock_status(store, "web") is None


def _url(store) -> str:
    return f"s3://{store.url.bucket}/{store.url.prefix}?endpoint_url={store.url.endpoint_url}"


def _raw_index(store) -> dict:
    got = store.get("history/index.json")
    return {r["run_id"]: r for r in got[0]["runs"]} if got else {}


def test_a_shard_that_ends_ok_records_its_end_in_its_journal_not_the_index(store):
    hist = open_history(_url(store), "")
    hist.store = store  # count on this store
    hist.start_run(run_id="r1.s1of2", playbook="pb.yml", name="pb", mode="run", release_id="REL")
    hist.add_result("r1.s1of2", _result("sync", "web1"))
    before = dict(store.by_kind)
    hist.finish_run("r1.s1of2", 0, "ok")
    hist.close()
    assert store.by_kind.get("index", 0) == before.get("index", 0)  # parts ending together do not contend
    assert _raw_index(store)["r1.s1of2"]["status"] == "running"
    other = open_history(_url(store), "")  # elsewhere: the journal has the end
    rec = other.run("r1.s1of2")
    assert (rec.status, rec.exit_code) == ("ok", 0) and rec.finished
    assert [r.status for r in other.runs("pb")] == ["ok"]
    # a failed part goes to the index at once (its resume and the coordinator's refusal read it)
    hist.start_run(run_id="r1.s2of2", playbook="pb.yml", name="pb", mode="run", release_id="REL")
    hist.finish_run("r1.s2of2", 1, "failed")
    hist.close()
    assert _raw_index(store)["r1.s2of2"]["status"] == "failed"


def test_a_resumed_part_is_running_again_whatever_its_journal_said_before(store):
    hist = open_history(_url(store), "")
    hist.start_run(run_id="r1.s1of2", playbook="pb.yml", name="pb", mode="run", release_id="REL")
    hist.add_result("r1.s1of2", _result("sync", "web1"))
    hist.finish_run("r1.s1of2", 0, "ok")
    hist.close()
    again = open_history(_url(store), "")
    again.start_run(run_id="r1.s1of2", playbook="pb.yml", name="pb", mode="run", release_id="REL")
    reader = open_history(_url(store), "")
    assert reader.run("r1.s1of2").status == "running"
    assert [r["step"] for r in reader.results("r1.s1of2")] == ["sync"]  # what it recorded is kept
    again.finish_run("r1.s1of2", 0, "ok")
    again.close()
    assert reader.run("r1.s1of2").status == "ok"


def test_the_coordinator_folds_the_parts_ends_into_the_index(store):
    for part in ("r1.s1of2", "r1.s2of2"):
        h = open_history(_url(store), "")
        h.start_run(run_id=part, playbook="pb.yml", name="pb", mode="run", release_id="REL")
        h.finish_run(part, 0, "ok")
        h.close()
    coord = open_history(_url(store), "")
    coord.store = store
    assert {r.run_id: r.status for r in coord.runs("pb")} == {"r1.s1of2": "ok", "r1.s2of2": "ok"}  # as it checks
    before = store.by_kind.get("index", 0)
    coord.start_run(run_id="r1.coord", playbook="pb.yml", name="pb", mode="run", release_id="REL")
    coord.finish_run("r1.coord", 0, "ok")
    coord.close()
    assert store.by_kind["index"] - before == 2  # CAS writes on the index it read: no read again
    raw = _raw_index(store)
    assert {p: raw[p]["status"] for p in raw} == {"r1.s1of2": "ok", "r1.s2of2": "ok", "r1.coord": "ok"}


def test_a_shard_whose_journal_cannot_be_written_records_its_end_in_the_index(store, monkeypatch):
    hist = open_history(_url(store), "")
    hist.store = store
    hist.start_run(run_id="r1.s1of2", playbook="pb.yml", name="pb", mode="run", release_id="REL")
    real = store.put

    def put(name, value, **kw):
        if name.startswith("history/runs/"):
            raise StateError(f"{name}: the backend went away")
        return real(name, value, **kw)

    monkeypatch.setattr(store, "put", put)
    hist.finish_run("r1.s1of2", 0, "ok")
    hist.close()
    assert _raw_index(store)["r1.s1of2"]["status"] == "ok"


def test_a_sharded_run_holds_its_lock_from_the_first_shard_to_the_end_of_its_coordinator(store):
    def counted(fn) -> tuple[int, int]:
        before = dict(store.by_kind)
        fn()
        return tuple(store.by_kind.get(k, 0) - before.get(k, 0) for k in ("locks", "journal"))

    store.self_test()
    shards: list = []
    spent = [counted(lambda i=i: shards.append(_part(store, "r1", f"s{i}of2"))) for i in (1, 2)]
    assert spent == [(1, 1), (2, 1)]  # the lock: a create, or a create that finds it and a read
    # ...and the journal: the claim (a part reads its journal at its start anyway)
    assert [counted(lambda t=t: _release(t, ended_ok=True)) for t in shards] == [(0, 0), (0, 0)]
    with pytest.raises(LockHeld, match="run r1"):  # no other run between the shards and the coordinator
        S3Lock(store, "web", run_id="r2", part="run", playbook="pb.yml").acquire()
    coord: list = []
    assert counted(lambda: coord.append(_part(store, "r1", "coord"))) == (1, 1)  # it reads the lock
    with pytest.raises(LockHeld, match="part coord of run r1 is already running"):
        _part(store, "r1", "coord")
    assert counted(lambda: _release(coord[0], ended_ok=True)) == (1, 0)  # the end of the run: the lock goes
    assert lock_status(store, "web") is None


def test_parts_starting_together_pay_at_most_two_lock_requests_each_and_one_copy_of_each_runs(store):
    """Four shards and a copy of each start at one instant, each process with its own store."""
    store.self_test()
    url = parse_state_url(_url(store))
    names = [f"s{i}of4" for i in range(1, 5)] * 2
    start = threading.Barrier(len(names))
    won: dict[str, list] = {}
    lost: list[str] = []
    spent: list[int] = []
    mutex = threading.Lock()

    def take(name):
        own = S3Store(url)
        own.self_test()
        start.wait()
        try:
            taken = _part(own, "r1", name, total=4)
            with mutex:
                won.setdefault(name, []).append(taken)
        except LockHeld as exc:
            assert "is already running" in str(exc)
            with mutex:
                lost.append(name)
        with mutex:
            spent.append(own.by_kind.get("locks", 0))

    threads = [threading.Thread(target=take, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(won) == sorted(set(names)) and all(len(w) == 1 for w in won.values())
    assert sorted(lost) == sorted(set(names))
    assert max(spent) <= 2 and spent.count(1) == 1  # one created the lock, every other part read it
    for [taken] in won.values():
        _release(taken, ended_ok=True)
    _release(_part(store, "r1", "coord", total=4), ended_ok=True)
    assert lock_status(store, "web") is None


def test_a_dead_sharded_runs_lock_is_taken_over_only_after_its_parts_are_fenced(store):
    from engine.record.state.s3lease import PartLease

    dead = _part(store, "r1", "s1of2", ttl=-1)  # its lock's own lease is over at once
    _release(dead, ended_ok=False)  # ...and its part's lease is gone: the run is dead
    late = S3Lock(store, "web", run_id="r1", part="s2of2", playbook="pb.yml", parts=("s1of2", "s2of2", "coord"))
    late.acquire()  # a shard of the dead run reads the lock: it is its run's...
    taker = S3Lock(store, "web", run_id="r2", part="run", playbook="pb.yml")
    taker.acquire()  # ...and r2 takes it over before that shard claims its lease
    assert lock_status(store, "web")["run_id"] == "r2"
    with pytest.raises(LockHeld, match="run r1 lost it"):  # the late shard cannot deploy beside r2
        PartLease(store, "r1.s2of2", {"web": late.token}, ttl=60).claim()
    taker.release()


def test_a_sharded_run_with_a_live_part_is_not_taken_over(store):
    first = _part(store, "r1", "s1of2", ttl=-1)  # the lock's own lease is over, the part's is not
    first[0].ttl = 600
    first[0].renew(force=True)
    with pytest.raises(LockHeld, match=r"run r1.*part s1of2 has a live lease"):
        S3Lock(store, "web", run_id="r2", part="run", playbook="pb.yml").acquire()
    assert lock_status(store, "web")["run_id"] == "r1"
    _release(_part(store, "r1", "s2of2"), ended_ok=True)  # r2 fenced none of r1's parts
    _release(first, ended_ok=True)
    _release(_part(store, "r1", "coord"), ended_ok=True)


def test_a_take_over_that_meets_a_part_claiming_meanwhile_withdraws_its_fences(store, monkeypatch):
    from engine.record.state import s3lease

    dead = _part(store, "r1", "s1of2", ttl=-1)
    _release(dead, ended_ok=False)  # the lock's and the part's leases are over: r1 looks dead
    real = s3lease.fence

    def fence(st, run, part, fleet, token, *, held):
        if part == "s2of2":  # r2 has fenced coord and s1of2 when the late shard claims its lease
            _part(store, "r1", "s2of2")
        return real(st, run, part, fleet, token, held=held)

    monkeypatch.setattr("engine.record.state.s3lock.fence", fence)
    with pytest.raises(LockHeld, match=r"run r1.*part s2of2 has a live lease"):
        S3Lock(store, "web", run_id="r2", part="run", playbook="pb.yml").acquire()
    monkeypatch.undo()
    assert lock_status(store, "web")["run_id"] == "r1"
    assert not any(store.get(f"history/runs/r1.{p}.json")[0].get("fenced") for p in ("coord", "s1of2", "s2of2"))
    _release(_part(store, "r1", "s1of2"), ended_ok=True)  # its resume and its coordinator still join
    _release(_part(store, "r1", "coord"), ended_ok=True)


def test_a_parts_lease_is_renewed_in_its_journal_and_lost_when_someone_else_writes_it(store):
    [lease, _lock] = _part(store, "r1", "s1of2", ttl=600)
    first = store.get("history/runs/r1.s1of2.json")[0]["lease"]["expires"]
    lease.renew(force=True)
    doc, _etag = store.get("history/runs/r1.s1of2.json")
    assert doc["lease"]["expires"] > first and doc["results"] == []
    store.put("history/runs/r1.s1of2.json", {"results": [], "fenced": ["x"]})  # another process wrote it
    with pytest.raises(StateError, match="lost its lease"):
        lease.write({"results": []})
    lease.release(ended_ok=False)


def test_lock_status_and_release_read_a_sharded_runs_leases_in_its_journals(store, tmp_path, capsys):
    from engine.cli import main

    (tmp_path / "inv.yml").write_text("hosts: {web1: {connection: local}}\ngroups: {web: {hosts: [web1]}}\n")
    (tmp_path / "pb.yml").write_text(
        "fleets: {web: {hosts: web}}\nsteps:\n  - {id: s, module: command, fleet: web, args: {argv: ['true']}}\n"
    )
    argv = [str(tmp_path / "pb.yml"), "-i", str(tmp_path / "inv.yml"), "--state", _url(store)]
    part = _part(store, "r1", "s1of2", ttl=-1)  # the lock's own lease is over at once
    part[0].ttl = 600
    part[0].renew(force=True)  # the part's is not
    assert main(["lock", "status", *argv]) == 0
    assert "held by" in (out := capsys.readouterr().out) and "1 live lease(s)" in out
    assert main(["lock", "release", *argv]) == 1 and "has a live lease" in capsys.readouterr().out
    _release(part, ended_ok=False)  # it failed: no lease is left
    assert main(["lock", "status", *argv]) == 0 and "every lease expired" in capsys.readouterr().out
    assert main(["lock", "release", *argv]) == 0 and "broken (was " in capsys.readouterr().out
    assert lock_status(store, "web") is None


def test_a_killed_part_resumes_at_once_after_lock_break(store):
    killed = _part(store, "r1", "s1of2")  # SIGKILLed: its lease stays in its journal
    with pytest.raises(LockHeld, match="part s1of2 of run r1 is already running"):
        _part(store, "r1", "s1of2")
    break_lock(store, "web")  # the leases name the broken lock's token: they hold nothing now
    resumed = _part(store, "r1", "s1of2")
    assert resumed[1].token != killed[1].token
    _release(resumed, ended_ok=True)


def test_a_shard_whose_start_loses_its_write_to_a_sibling_records_it_in_its_journal(store, monkeypatch):
    from engine.record.state import s3history

    def part(name, *, own=False):
        hist = open_history(_url(store), "")
        if own:  # its own process: its own store and no memory of the index
            hist.store = S3Store(parse_state_url(_url(store)))
        s3history._KNOWN.clear()
        return hist

    a, b, c = part("a"), part("b", own=True), part("c")
    a.start_run(run_id="r1.s1of3", playbook="pb.yml", name="pb", mode="run", release_id="REL")
    s3history._KNOWN.clear()
    real, raced = b.store.put, []

    def put(name, value, **kw):
        if name == "history/index.json" and not raced:  # a sibling writes between b's read and b's write
            raced.append(1)
            c.start_run(run_id="r1.s3of3", playbook="pb.yml", name="pb", mode="run", release_id="REL")
            s3history._KNOWN.clear()
        return real(name, value, **kw)

    monkeypatch.setattr(b.store, "put", put)
    b.start_run(run_id="r1.s2of3", playbook="pb.yml", name="pb", mode="run", release_id="REL")
    assert b.store.by_kind["index"] == 3  # read, the lost write, a read that finds its siblings there
    assert "r1.s2of3" not in _raw_index(store)
    reader = part("reader")
    assert {r.run_id: r.status for r in reader.runs("pb")} == dict.fromkeys(
        ("r1.s1of3", "r1.s2of3", "r1.s3of3"), "running"
    )
    assert reader.run("r1.s2of3").release_id == "REL"
    for hist, name in ((a, "r1.s1of3"), (b, "r1.s2of3"), (c, "r1.s3of3")):
        hist.finish_run(name, 0, "ok")
        hist.close()
    coord = part("coord")
    assert {r.status for r in coord.runs("pb")} == {"ok"}  # what the coordinator checks first
    coord.start_run(run_id="r1.coord", playbook="pb.yml", name="pb", mode="run", release_id="REL")
    coord.finish_run("r1.coord", 0, "ok")
    coord.close()
    raw = _raw_index(store)  # the coordinator folded the part the index lacked into it
    assert {p: raw[p]["status"] for p in raw} == {
        "r1.s1of3": "ok",
        "r1.s2of3": "ok",
        "r1.s3of3": "ok",
        "r1.coord": "ok",
    }
    assert raw["r1.s2of3"]["release_id"] == "REL" and raw["r1.s2of3"]["playbook"] == "pb.yml"


def test_a_failed_shard_whose_start_only_its_journal_holds_goes_into_the_index_whole(store, monkeypatch):
    from engine.record.state import s3history

    first = open_history(_url(store), "")
    first.start_run(run_id="r1.s1of2", playbook="pb.yml", name="pb", mode="run", release_id="REL")
    s3history._KNOWN.clear()
    late = open_history(_url(store), "")
    late.store = S3Store(parse_state_url(_url(store)))
    real, raced = late.store.put, []

    def put(name, value, **kw):
        if name == "history/index.json" and not raced:  # a sibling writes the index between read and write
            raced.append(1)
            first.finish_run("r1.s1of2", 1, "failed")
            s3history._KNOWN.clear()
        return real(name, value, **kw)

    monkeypatch.setattr(late.store, "put", put)
    late.start_run(run_id="r1.s2of2", playbook="pb.yml", name="pb", mode="run", release_id="REL")
    monkeypatch.undo()
    assert raced and "r1.s2of2" not in _raw_index(store)  # its start is in its journal only
    late.finish_run("r1.s2of2", 1, "failed")
    late.close()
    first.close()
    rec = _raw_index(store)["r1.s2of2"]
    assert (rec["status"], rec["release_id"], rec["playbook"]) == ("failed", "REL", "pb.yml") and rec["started"]
