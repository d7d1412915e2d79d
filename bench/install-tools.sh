#!/bin/sh
# install-tools.sh: what `make bench` and `make profile` need besides
# memcached (the Makefile's deps target installs that): graphviz, for the
# SVG call graphs of the profiles, and librsvg2-bin (rsvg-convert), for a
# PNG copy of the chart. Installed with apt-get when missing; a failure
# only means those extras are skipped.
missing=
command -v dot >/dev/null 2>&1 || missing="$missing graphviz"
command -v rsvg-convert >/dev/null 2>&1 || missing="$missing librsvg2-bin"
[ -z "$missing" ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
	echo "install-tools: no apt-get; install$missing yourself for SVG call graphs and the PNG chart" >&2
	exit 0
fi
SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo
echo "installing$missing"
if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null; }; then
	echo "install-tools: could not install$missing; continuing without" >&2
fi
exit 0
