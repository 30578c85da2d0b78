import os
import platform
import subprocess
import sys

import pytest

from farnet.core.allocator import MALLOC_TUNABLES, OPT_OUT, malloc_setting, tunables


def test_tunables_on_glibc_with_a_clean_environment():
    assert tunables({}, "glibc") == MALLOC_TUNABLES
    assert "glibc.malloc.mmap_threshold=1073741824" in MALLOC_TUNABLES


def test_other_tunables_of_the_user_are_kept():
    assert tunables({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2"}, "glibc") == f"glibc.cpu.hwcaps=-AVX2:{MALLOC_TUNABLES}"


@pytest.mark.parametrize("environ, libc", [
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "glibc"),  # the user's malloc choice wins
    ({OPT_OUT: "0"}, "glibc"),                                   # opted out
    ({}, ""),                                                    # musl, macOS, Windows: nothing to do
])
def test_nothing_changes(environ, libc):
    assert tunables(environ, libc) is None


def test_malloc_setting_says_what_is_in_force():
    assert malloc_setting().startswith(("tuned (", "C library defaults"))


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="GLIBC_TUNABLES exists on glibc only")
def test_re_executes_once_with_the_same_arguments():
    code = ("import os, sys; from farnet.core.allocator import tune_malloc; print('start', flush=True); tune_malloc(); "
            "print(os.environ.get('GLIBC_TUNABLES')); print(sys.argv[1:])")
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", OPT_OUT)}
    out = subprocess.run([sys.executable, "-c", code, "a b", "--x"], env=env, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out == ["start", "start", MALLOC_TUNABLES, "['a b', '--x']"]  # the first process ran up to the exec
    env[OPT_OUT] = "0"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out == ["start", "None", "[]"]  # opted out: no re-exec, no tunables
