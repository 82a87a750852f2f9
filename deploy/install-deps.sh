#!/usr/bin/env bash
# install-deps.sh - make sure the Debian 12 packages that build, test and run cibad are
# present. As root it installs what is missing; otherwise it prints the apt-get line.
#
#   deploy/install-deps.sh          what `make`, `make check` and `make run` need
#   deploy/install-deps.sh --lint   the same, plus clang-format and cppcheck for make lint
set -euo pipefail

packages=(
    build-essential pkg-config
    libevent-dev libjansson-dev libssl-dev libpq-dev check libsubunit-dev
    postgresql-15 postgresql-client-15 openssl curl wrk
)
case ${1:-} in
'') ;;
--lint) packages+=(clang-format cppcheck) ;;
*)
    echo "usage: $0 [--lint]" >&2
    exit 2
    ;;
esac

missing=()
for p in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [[ $status == "install ok installed" ]] || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

if [[ $(id -u) -ne 0 ]]; then
    echo "cibad needs these Debian packages: ${missing[*]}" >&2
    echo "run: sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
    exit 1
fi

echo "installing missing packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
