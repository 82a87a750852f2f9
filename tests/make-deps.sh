#!/usr/bin/env bash
# make-deps.sh - checks that make installs the Debian packages before it runs pkg-config
# for compiler flags, and that a package pkg-config cannot find stops the build.
#
# It runs make on one object in a temporary build directory, with a stand-in for
# deploy/install-deps.sh (INSTALL_DEPS) and a pkg-config wrapper on PATH that reports
# libpq missing until the stand-in has run. The real compiler builds the object.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d /tmp/cibad-make-deps.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
real_pkg_config=$(command -v pkg-config)
# The test's own make must start from the first pass, not inherit the caller's.
unset MAKEFLAGS MFLAGS MAKELEVEL CIBAD_DEPS_DONE

mkdir -p "$tmp/bin"
cat >"$tmp/bin/pkg-config" <<EOF
#!/usr/bin/env bash
# Before "installation" libpq is missing, and after it --cflags gains a marker define.
if [[ ! -e $tmp/installed && " \$* " == *" libpq "* ]]; then
    exit 1
fi
out=\$("$real_pkg_config" "\$@") || exit
if [[ " \$* " == *" --cflags "* ]]; then
    out="\$out -DCIBAD_TEST_DEPS_INSTALLED"
fi
echo "\$out"
EOF
cat >"$tmp/install" <<EOF
#!/usr/bin/env bash
touch "$tmp/installed"
EOF
cat >"$tmp/install-nothing" <<EOF
#!/usr/bin/env bash
exit 0
EOF
chmod +x "$tmp/bin/pkg-config" "$tmp/install" "$tmp/install-nothing"

failed=0
fail() {
    echo "make-deps: $*" >&2
    failed=1
}

# 1. The installer runs first, so the compiler gets the flags pkg-config gives after it.
if ! PATH="$tmp/bin:$PATH" make -C "$root" --no-print-directory \
    INSTALL_DEPS="$tmp/install" BUILD="$tmp/build" "$tmp/build/util/util.o" \
    >"$tmp/out1" 2>&1; then
    fail "make failed although the installer provided every package:"
    cat "$tmp/out1" >&2
elif ! grep -q -- "-DCIBAD_TEST_DEPS_INSTALLED" "$tmp/out1"; then
    fail "the compiler ran without the flags pkg-config gives after installation:"
    cat "$tmp/out1" >&2
fi

# 2. A package still missing after installation stops make and names the package.
rm -f "$tmp/installed"
rm -rf "$tmp/build"
if PATH="$tmp/bin:$PATH" make -C "$root" --no-print-directory \
    INSTALL_DEPS="$tmp/install-nothing" BUILD="$tmp/build" "$tmp/build/util/util.o" \
    >"$tmp/out2" 2>&1; then
    fail "make succeeded although pkg-config cannot find libpq:"
    cat "$tmp/out2" >&2
elif ! grep -q "pkg-config cannot find libpq" "$tmp/out2"; then
    fail "make failed without naming the missing package:"
    cat "$tmp/out2" >&2
fi
if [[ -e $tmp/build/util/util.o ]]; then
    fail "make compiled util.o although pkg-config cannot find libpq"
fi

[[ $failed -eq 0 ]] && echo "make-deps: make installs packages before pkg-config runs"
exit $failed
