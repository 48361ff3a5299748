"""collie vdi backup / restore against a fake client: the stream written, the whole stream
checked before anything is sent (file read twice, pipe spooled), refusals and exit codes."""
import io
import json
import sys

import pytest

import vdi.backup as backup
from collie import backup as collie_backup
from tests.unit.collie.test_cli import M, FakeClient, api_error, cmd, one_line, run

HEADER = {"format": backup.FORMAT, "name": "vm", "size": 12 * M,
          "to": {"state": "b" * 32, "tag": "s2", "size": 12 * M, "vid": 7},
          "from": {"state": "a" * 32, "tag": "s1", "size": 12 * M}}


class BackupClient(FakeClient):
    """The snapshot's bytes in ``disk``; a diff answer; restores recorded."""

    def __init__(self, disk=b"", **kw):
        super().__init__(disk=disk, **kw)
        self.uploads = []

    def get_bytes(self, path, offset, length, **params):
        self.calls.append(("GET", path, None, {"offset": offset, "length": length, **params}))
        return bytes(self.disk[offset:offset + length])

    def put_stream(self, path, chunks, **params):
        body = b"".join(chunks)
        self.calls.append(("PUT", path, len(body), params))
        self.uploads.append(body)
        answer = self.answers.get(("PUT", path))
        if isinstance(answer, BaseException):
            raise answer
        return answer or {"data_bytes": 0, "zero_bytes": 0}


def diff_answer(extents):
    return {"header": HEADER, "extents": extents,
            "data_bytes": sum(n for _, n, k in extents if k == "data"),
            "zero_bytes": sum(n for _, n, k in extents if k == "zero")}


def test_backup_writes_records_in_aligned_chunks(capsysbinary):
    disk = bytes(range(256)) * (12 * M // 256)
    fake = BackupClient(disk=disk, answers={
        ("GET", "/vdis/vm/snapshots/s2/diff"): diff_answer([[2 * M, 5 * M, "data"],
                                                          [8 * M, 4 * M, "zero"]])})
    assert collie_backup.cmd_vdi_backup(fake, cmd(["vdi", "backup", "-F", "s1", "-s", "s2",
                                                   "vm"])) == 0
    raw = capsysbinary.readouterr().out
    events = backup.decode(raw)
    assert events[0].header == HEADER
    assert [(e.offset, e.length) for e in events[1:-1]] == [
        (2 * M, 2 * M), (4 * M, 3 * M), (8 * M, 4 * M)]
    assert events[1].data == disk[2 * M:4 * M] and events[2].data == disk[4 * M:7 * M]
    assert isinstance(events[3], backup.Zero)
    diff_call = fake.calls[0]
    assert diff_call[:2] == ("GET", "/vdis/vm/snapshots/s2/diff") and diff_call[3] == {
        "from": "s1"}
    reads = [c[3] for c in fake.calls if c[1] == "/vdis/vm/snapshots/s2/data"]
    # by the vid of the header's snapshot: a tag made again meanwhile is refused
    assert reads == [{"offset": 2 * M, "length": 2 * M, "vid": 7},
                     {"offset": 4 * M, "length": 3 * M, "vid": 7}]


def test_backup_refuses_a_terminal(monkeypatch, capsys):
    monkeypatch.setattr(collie_backup, "_is_tty", lambda f: True)
    code, _, err = run(["vdi", "backup", "-s", "s2", "vm"], BackupClient(), capsys)
    assert code == 64 and "terminal" in one_line(err)


def stream(extents=((0, b"x" * 4096), (M, 4096))) -> bytes:
    return backup.encode(HEADER, list(extents))


def feed_pipe(monkeypatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


def restore_client(answers=None):
    return BackupClient(answers={("POST", "/vdis/r/restore/check"): {"target": {}},
                                 ("PUT", "/vdis/r/restore"): {"data_bytes": 4096,
                                                              "zero_bytes": 4096},
                                 **(answers or {})})


def test_restore_from_a_pipe_checks_then_sends_the_spooled_copy(monkeypatch, capsys):
    raw = stream()
    feed_pipe(monkeypatch, raw)
    fake = restore_client()
    code, out, err = run(["vdi", "restore", "-s", "t", "r"], fake, capsys)
    assert code == 0, err
    assert out.strip() == "vdi 'r' restored as snapshot 't' (4.0 KB written, 4.0 KB zeroed)"
    check = fake.calls[0]
    assert check[:3] == ("POST", "/vdis/r/restore/check", {"tag": "t", "header": HEADER,
                                                           "force": False})
    assert fake.uploads == [raw] and fake.calls[1][3] == {"tag": "t"}


def test_restore_from_a_file_reads_it_twice(monkeypatch, capsys, tmp_path):
    raw = stream()
    path = tmp_path / "s.bk"
    path.write_bytes(b"skip" + raw)
    f = open(path)
    f.buffer.read(4)                    # stdin need not start at the file's start
    monkeypatch.setattr(sys, "stdin", f)
    fake = restore_client()
    code, out, err = run(["vdi", "restore", "-f", "-s", "t", "r", "--json"], fake, capsys)
    f.close()
    assert code == 0, err
    assert fake.uploads == [raw] and fake.calls[1][3] == {"tag": "t", "force": 1}
    assert json.loads(out) == {"data_bytes": 4096, "zero_bytes": 4096}


@pytest.mark.parametrize("damage,message", [
    (lambda raw: raw[:-1], "truncated"),
    (lambda raw: raw[:200] + bytes([raw[200] ^ 1]) + raw[201:], "checksum does not match"),
    (lambda raw: raw + b"x", "after the end"),
])
def test_a_damaged_stream_is_refused_before_anything_is_sent(monkeypatch, capsys, damage,
                                                            message):
    feed_pipe(monkeypatch, damage(stream()))
    fake = restore_client()
    code, _, err = run(["vdi", "restore", "-s", "t", "r"], fake, capsys)
    assert code == 1 and message in one_line(err) and "nothing was restored" in err
    assert fake.uploads == []


def test_not_a_stream_is_refused_before_the_check(monkeypatch, capsys):
    feed_pipe(monkeypatch, b"just some bytes, not a backup")
    fake = restore_client()
    code, _, err = run(["vdi", "restore", "-s", "t", "r"], fake, capsys)
    assert code == 1 and "bad magic" in one_line(err) and fake.calls == []


def test_a_refused_base_stops_before_reading_the_rest(monkeypatch, capsys):
    feed_pipe(monkeypatch, stream())
    fake = restore_client({("POST", "/vdis/r/restore/check"): api_error(
        400, "InvalidRequest", "VDI 'r' is not at the stream's base", "POST",
        "/vdis/r/restore/check")})
    code, _, err = run(["vdi", "restore", "-s", "t", "r"], fake, capsys)
    assert code == 1 and "not at the stream's base" in one_line(err) and fake.uploads == []


def test_no_spool_sends_the_pipe_unchecked(monkeypatch, capsys):
    # past the first read (what the header check decodes) the bytes are not looked at
    raw = stream([(0, b"y" * 2 * M)])
    feed_pipe(monkeypatch, raw[:-1] + bytes([raw[-1] ^ 1]))     # the sheep will refuse it
    fake = restore_client({("PUT", "/vdis/r/restore"): api_error(
        400, "InvalidRequest", "backup stream is corrupt; nothing was restored", "PUT",
        "/vdis/r/restore")})
    code, _, err = run(["vdi", "restore", "--no-spool", "-s", "t", "r"], fake, capsys)
    assert code == 1 and "corrupt" in one_line(err)
    assert len(fake.uploads) == 1 and len(fake.uploads[0]) == len(raw)


def test_restore_needs_a_tag_and_refuses_a_terminal(monkeypatch, capsys):
    code, _, err = run(["vdi", "restore", "r"], restore_client(), capsys)
    assert code == 64
    monkeypatch.setattr(collie_backup, "_is_tty", lambda f: True)
    code, _, err = run(["vdi", "restore", "-s", "t", "r"], restore_client(), capsys)
    assert code == 64 and "terminal" in one_line(err)
