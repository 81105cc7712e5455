# Sourced by the best-effort set-up steps in scripts/test.d/*.sh that install one Debian package
# (no .sh suffix: scripts/test runs every *.sh there as a step of its own). Each function prints
# what happened as "TAG: ..."; one that returns 1 has said why the dependent tests will skip, and
# the step then ends with exit 0 (a set-up step never fails the run).
#
# The sourcing step defines two functions first:
#   have     succeeds when the program the tests need is there;
#   version  prints its version.

# apt_present TAG: say so and succeed when the program is already there.
apt_present() {
  have || return 1
  echo "$1: $(version || echo present)"
}

# apt_ready TAG PACKAGE WHAT TESTS: root with apt-get, and `apt-get update` has run.
apt_ready() {
  local tag=$1 package=$2 what=$3 tests=$4
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "$tag: $what is missing and we are not root with apt-get;" \
      "install Debian's $package package to run the $tests"
    return 1
  fi
  echo "$tag: installing Debian's $package package (apt-get, at most 10 minutes)"
  export DEBIAN_FRONTEND=noninteractive
  if ! timeout 180 apt-get update -qq >/dev/null 2>&1; then
    echo "$tag: apt-get update failed or timed out; the $tests will skip"
    return 1
  fi
}

# apt_install TAG PACKAGE TESTS: install the package, without its recommended ones.
apt_install() {
  local tag=$1 package=$2 tests=$3
  if ! timeout 420 apt-get install -y -qq --no-install-recommends "$package" >/dev/null 2>&1; then
    echo "$tag: apt-get install $package failed or timed out; the $tests will skip"
    return 1
  fi
}

# apt_report TAG WHAT TESTS: whether the installed package brought the program.
apt_report() {
  local tag=$1 what=$2 tests=$3
  if have; then
    echo "$tag: installed $(version)"
  else
    echo "$tag: the package installed but $what is missing; the $tests will skip"
  fi
}
