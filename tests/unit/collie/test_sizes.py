"""collie.sizes: parsing user sizes and Sheepdog-style formatting."""
import pytest

from collie.sizes import format_iec, format_rate, format_size, parse_size

K, M, G, T = 1 << 10, 1 << 20, 1 << 30, 1 << 40


@pytest.mark.parametrize("text, expected", [
    ("4096", 4096),
    ("1", 1),
    ("4k", 4 * K),
    ("4K", 4 * K),
    ("512M", 512 * M),
    ("10G", 10 * G),
    ("1T", T),
    ("1GiB", G),
    ("1gib", G),
    ("2GB", 2 * G),
    ("2gb", 2 * G),
    ("512b", 512),
    ("512B", 512),
    ("1.5G", 3 * G // 2),
    (" 2 M ", 2 * M),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "x", "G", "10Q", "1P", "-1", "1e3", "iB", "4iB", "1..5G", "10 G B"])
def test_parse_size_rejects_garbage(text):
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(text)


@pytest.mark.parametrize("text", ["0", "0G", "0.0M"])
def test_parse_size_rejects_zero(text):
    with pytest.raises(ValueError, match="greater than zero"):
        parse_size(text)


def test_parse_size_zero_allowed_for_offsets():
    assert parse_size("0", allow_zero=True) == 0
    assert parse_size("0M", allow_zero=True) == 0


def test_parse_size_rejects_fractional_bytes():
    with pytest.raises(ValueError, match="whole number of bytes"):
        parse_size("1.3")


def test_parse_size_error_is_one_line():
    with pytest.raises(ValueError) as info:
        parse_size("10Q")
    assert "\n" not in str(info.value) and "'10Q'" in str(info.value)


@pytest.mark.parametrize("nbytes, expected", [
    (0, "0.0 MB"),
    (7, "7 B"),
    (4 * K, "4.0 KB"),
    (512 * K, "512 KB"),
    (4 * M, "4.0 MB"),
    (3 * M // 2, "1.5 MB"),
    (12 * M, "12 MB"),
    (1023 * M, "1023 MB"),
    (1024 * M, "1.0 GB"),
    (10 * G, "10 GB"),
    (T, "1.0 TB"),
    (5 * 1024 * T, "5.0 PB"),
])
def test_format_size_like_sheepdog(nbytes, expected):
    assert format_size(nbytes) == expected


@pytest.mark.parametrize("nbytes, expected", [
    (512, "512 B"), (4 * M, "4 MiB"), (M, "1 MiB"), (G, "1 GiB"), (3 * M // 2, "1.5 MiB"), (1536, "1.5 KiB"),
])
def test_format_iec(nbytes, expected):
    assert format_iec(nbytes) == expected


def test_format_rate():
    assert format_rate(10 * M, 2.0) == "5.0 MiB/s"
    assert format_rate(10 * M, 0) == "-- MiB/s"
