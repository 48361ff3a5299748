"""Where collie finds the admin token."""
from __future__ import annotations

import stat

import pytest

from collie.tokens import TokenError, find_token, user_token_file, write_token


def test_the_token_file_flag_wins(tmp_path):
    f = tmp_path / "t"
    f.write_text("from-flag\n")
    tok = find_token(f, {"SHEEP_ADMIN_TOKEN": "from-env"}, tmp_path / "etc")
    assert (tok.value, tok.file) == ("from-flag", f)


def test_environment_then_user_file_then_the_one_system_copy(tmp_path):
    home = tmp_path / "home"
    system = tmp_path / "etc"
    assert find_token(None, {"SHEEP_ADMIN_TOKEN": " e \n", "HOME": str(home)}, system).value == "e"
    envfile = tmp_path / "envfile"
    envfile.write_text("ef\n")
    assert find_token(None, {"SHEEP_ADMIN_TOKEN_FILE": str(envfile)}, system).value == "ef"
    assert find_token(None, {"HOME": str(home)}, system).value is None
    (system / "prod").mkdir(parents=True)
    (system / "prod" / "admin.token").write_text("sys\n")
    assert find_token(None, {"HOME": str(home)}, system).value == "sys"
    (system / "test").mkdir()
    (system / "test" / "admin.token").write_text("other\n")
    assert find_token(None, {"HOME": str(home)}, system).value is None   # which one? none
    write_token(user_token_file({"HOME": str(home)}), "user")
    assert find_token(None, {"HOME": str(home)}, system).value == "user"
    assert find_token(None, {"XDG_CONFIG_HOME": str(tmp_path / "x")}, system).value is None


def test_a_named_but_unreadable_file_is_an_error(tmp_path):
    with pytest.raises(TokenError, match="cannot read token file"):
        find_token(tmp_path / "missing")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(TokenError, match="is empty"):
        find_token(tmp_path / "empty")


def test_written_tokens_are_private(tmp_path):
    path = tmp_path / "d" / "token"
    write_token(path, "abc")
    assert path.read_text() == "abc\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
