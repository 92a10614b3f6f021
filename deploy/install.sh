#!/usr/bin/env bash
# Install, update, roll back or remove cabinet-edge on Debian bookworm / Raspberry Pi OS.
#
#   sudo deploy/install.sh                       install or update from this source tree
#   sudo deploy/install.sh --wheel FILE.whl      ... from a wheel
#   sudo deploy/install.sh --rollback            go back to the previous release
#   sudo deploy/install.sh --rollback --to VER   go back to release VER (the remote updater's rollback)
#   sudo deploy/install.sh --uninstall [--purge] remove (config and data stay unless --purge)
#
# Every run is idempotent: running it twice changes nothing the second time. Each version lives in its
# own venv /opt/cabinet-edge/releases/<version>; /opt/cabinet-edge/current points at the running one and
# /opt/cabinet-edge/previous at the one before. An update builds the new release beside the running one,
# checks the existing config with the new version, switches `current`, restarts the service and waits for
# it to report READY=1 (Type=notify: ActiveState=active). If it does not, `current` is switched back and
# the old version restarted (exit status 3). The config in /etc/cabinet-edge is never overwritten; a newer
# example goes beside it as config.toml.example. Data in /var/lib/cabinet-edge is never touched.
#
# --prefix DIR installs into DIR instead of / (images, tests): every path is prefixed, users and groups
# are written to DIR/etc/passwd and DIR/etc/group, units are enabled as symlinks under DIR, and commands
# that would act on the running host (systemctl start/restart, daemon-reload, udevadm) are not run but
# appended to DIR/var/log/cabinet-edge-install.host-actions.
# --dry-run prints every action and changes nothing.
#
# Test hooks (environment):
#   CABINET_EDGE_READY_CMD  shell command run instead of asking systemd whether the service is up; exit 0
#                           means ready. It sees CABINET_EDGE_RELEASE=<version being checked>.
#   CABINET_EDGE_EDGE       edge executable used for `edge config check` instead of the new release's.
#
# See docs/DEPLOY.md.

set -euo pipefail

readonly APP=cabinet-edge
readonly UNIT=cabinet-edge.service
readonly CAN_UNIT=cabinet-edge-can0.service
# Remote updates: the path unit starts the (root) installer when the daemon hands over a verified release.
readonly UPDATE_PATH=cabinet-edge-update.path
readonly UPDATE_UNIT=cabinet-edge-update.service
readonly CAN_NETWORK=80-cabinet-edge-can0.network
readonly UDEV_RULES=99-cabinet-edge-rs485.rules
readonly SERVICE_USER=cabinet-edge
readonly READ_GROUP=cabinet-edge
readonly ADMIN_GROUP=cabinet-edge-admin
readonly SERIAL_GROUP=dialout
readonly APT_PACKAGES=(python3-venv iproute2 can-utils)

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$SCRIPT_DIR")

ACTION=install
PREFIX=""
DRY_RUN=0
PURGE=0
SOURCE=""
WHEEL=""
VERSION=""
ROLLBACK_TO=""
PYTHON=python3
SKIP_VENV=0
PIP_ARGS=()
CAN_MODE=unit
START=1
APT=1
FORCE=0
READY_TIMEOUT=90
SETTLE=10
KEEP_RELEASES=3
READY_CMD=${CABINET_EDGE_READY_CMD:-}
EDGE_CMD=${CABINET_EDGE_EDGE:-}

usage() {
	cat <<EOF
Usage: $0 [options]

Install or update:
  --source DIR        install from this source tree (default: $REPO_DIR)
  --wheel FILE        install from a wheel instead
  --version VER       release name (default: version in setup.cfg or the wheel name)
  --pip-arg ARG       extra pip argument, repeatable (offline: --pip-arg=--no-index
                      --pip-arg=--find-links=/media/usb/wheels)
  --python PY         interpreter for the venv (default: python3, needs >= 3.11)
  --can MODE          CAN interface set-up: unit (default, cabinet-edge-can0.service),
                      networkd (systemd-networkd .network file) or none
  --no-start          install and enable, but do not (re)start the service
  --ready-timeout S   seconds to wait for READY=1 after a restart (default $READY_TIMEOUT)
  --settle S          seconds the service must then stay up (default $SETTLE)
  --keep N            releases to keep (default $KEEP_RELEASES, never less than 2)
  --force             rebuild the release even if it exists (not the running one)
  --no-apt            do not apt-get install missing packages (${APT_PACKAGES[*]})
Other actions:
  --rollback          switch back to the previous release and restart
  --to VER            with --rollback: switch to release VER (must be built) instead
  --uninstall         remove the software; keep config, data, user and groups
  --purge             with --uninstall: remove config, data, user and groups too
General:
  --prefix DIR        install below DIR instead of / (no host commands are run)
  --dry-run           print every action, change nothing
  --skip-venv         (tests, needs --prefix) create an empty release instead of a venv
  -h, --help          this help
EOF
}

say() { printf '%s\n' "$*"; }
note() { printf '==> %s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() {
	printf 'ERROR: %s\n' "$1" >&2
	exit "${2:-1}"
}

quote() {
	local out="" a
	for a in "$@"; do out+=" $(printf '%q' "$a")"; done
	printf '%s' "${out# }"
}

# run CMD...: a command that changes files (below PREFIX). Printed, and not run in --dry-run.
run() {
	if ((DRY_RUN)); then
		say "[dry-run] $(quote "$@")"
		return 0
	fi
	say "+ $(quote "$@")"
	"$@"
}

# host CMD...: a command acting on the running system (services, udev, accounts, packages). With --prefix
# it is recorded, not run.
host() {
	if ((DRY_RUN)); then
		say "[dry-run] $(quote "$@")"
		return 0
	fi
	if [[ -n $PREFIX ]]; then
		say "[prefix] not run on this host: $(quote "$@")"
		mkdir -p "$(dirname "$HOST_LOG")"
		printf '%s\n' "$(quote "$@")" >>"$HOST_LOG"
		return 0
	fi
	say "+ $(quote "$@")"
	"$@"
}

# write_file DST MODE TEXT: write TEXT to DST unless it already holds exactly that.
write_file() {
	local dst=$1 mode=$2 text=$3
	if [[ -f $dst ]] && [[ $(cat "$dst") == "$text" ]]; then
		return 0
	fi
	if ((DRY_RUN)); then
		say "[dry-run] write $dst"
		return 0
	fi
	say "+ write $dst"
	printf '%s\n' "$text" >"$dst"
	chmod "$mode" "$dst"
}

# install_file SRC DST MODE: copy when missing or different. Returns 0 when it changed something.
install_file() {
	local src=$1 dst=$2 mode=$3
	if [[ -f $dst ]] && cmp -s "$src" "$dst" && [[ $(stat -c %a "$dst") == "${mode#0}" ]]; then
		return 1
	fi
	run install -D -m "$mode" "$src" "$dst"
}

# remove_path PATH...: remove what exists. Returns 0 when it removed something.
remove_path() {
	local p removed=1
	for p in "$@"; do
		if [[ -e $p || -L $p ]]; then
			run rm -rf -- "$p"
			removed=0
		fi
	done
	return "$removed"
}

ensure_dir() { # ensure_dir DIR MODE [OWNER:GROUP]
	local dir=$1 mode=$2 owner=${3:-}
	if [[ ! -d $dir ]]; then
		run install -d -m "$mode" "$dir"
	elif [[ $(stat -c %a "$dir") != "${mode#0}" ]]; then
		run chmod "$mode" "$dir"
	fi
	ensure_owner "$dir" "$owner"
}

ensure_owner() { # ensure_owner PATH OWNER:GROUP (real installs only: --prefix has no such users)
	local path=$1 owner=$2
	[[ -z $owner || -n $PREFIX ]] && return 0
	if ((DRY_RUN)) || [[ ! -e $path ]] || [[ $(stat -c %U:%G "$path") != "$owner" ]]; then
		run chown "$owner" "$path"
	fi
}

# symlink LINK TARGET: atomic (rename over the old link), so `current` is never missing.
symlink() {
	local link=$1 target=$2
	if [[ -L $link ]] && [[ $(readlink "$link") == "$target" ]]; then
		return 0
	fi
	run ln -sfn "$target" "$link.new"
	run mv -T "$link.new" "$link"
}

# ---- accounts ---------------------------------------------------------------------------------------
# Real installs use groupadd/useradd/usermod; --prefix edits PREFIX/etc/group and PREFIX/etc/passwd
# (same format), so an image or a test sees exactly which accounts the install creates.

group_exists() {
	if [[ -n $PREFIX ]]; then
		[[ -f $PREFIX/etc/group ]] && grep -q "^$1:" "$PREFIX/etc/group"
	else
		getent group "$1" >/dev/null
	fi
}

user_exists() {
	if [[ -n $PREFIX ]]; then
		[[ -f $PREFIX/etc/passwd ]] && grep -q "^$1:" "$PREFIX/etc/passwd"
	else
		getent passwd "$1" >/dev/null
	fi
}

user_in_group() { # user_in_group USER GROUP (supplementary membership)
	if [[ -n $PREFIX ]]; then
		[[ -f $PREFIX/etc/group ]] && grep -Eq "^$2:[^:]*:[^:]*:(.*,)?$1(,|$)" "$PREFIX/etc/group"
	else
		id -nG "$1" 2>/dev/null | tr ' ' '\n' | grep -qx "$2"
	fi
}

free_id() { # free_id FILE: highest free system id below 1000 in a passwd/group-style file
	local file=$1 id=999
	while [[ -f $file ]] && cut -d: -f3 "$file" | grep -qx "$id"; do
		id=$((id - 1))
	done
	printf '%s' "$id"
}

append_line() { # append_line FILE LINE
	if ((DRY_RUN)); then
		say "[dry-run] append to $1: $2"
		return 0
	fi
	say "+ append to $1: $2"
	mkdir -p "$(dirname "$1")"
	printf '%s\n' "$2" >>"$1"
}

rewrite_without() { # rewrite_without FILE NAME: drop the line of account NAME
	[[ -f $1 ]] && grep -q "^$2:" "$1" || return 0
	if ((DRY_RUN)); then
		say "[dry-run] remove $2 from $1"
		return 0
	fi
	say "+ remove $2 from $1"
	grep -v "^$2:" "$1" >"$1.new" || true
	mv "$1.new" "$1"
}

ensure_group() {
	local name=$1 gid=${2:-}
	group_exists "$name" && return 0
	if [[ -n $PREFIX ]]; then
		append_line "$PREFIX/etc/group" "$name:x:${gid:-$(free_id "$PREFIX/etc/group")}:"
	else
		host groupadd --system "$name"
	fi
}

ensure_member() { # ensure_member USER GROUP
	user_in_group "$1" "$2" && return 0
	if [[ -n $PREFIX ]]; then
		if ((DRY_RUN)); then
			say "[dry-run] add $1 to group $2 in $PREFIX/etc/group"
			return 0
		fi
		say "+ add $1 to group $2 in $PREFIX/etc/group"
		awk -F: -v OFS=: -v g="$2" -v u="$1" '$1 == g { $4 = ($4 == "" ? u : $4 "," u) } 1' \
			"$PREFIX/etc/group" >"$PREFIX/etc/group.new"
		mv "$PREFIX/etc/group.new" "$PREFIX/etc/group"
	else
		host usermod -a -G "$2" "$1"
	fi
}

ensure_accounts() {
	note "accounts: user $SERVICE_USER, groups $READ_GROUP, $ADMIN_GROUP, member of $SERIAL_GROUP"
	ensure_group "$SERIAL_GROUP" 20
	ensure_group "$READ_GROUP"
	ensure_group "$ADMIN_GROUP"
	if ! user_exists "$SERVICE_USER"; then
		if [[ -n $PREFIX ]]; then
			local gid=""
			if [[ -f $PREFIX/etc/group ]]; then
				gid=$(awk -F: -v g="$READ_GROUP" '$1 == g { print $3 }' "$PREFIX/etc/group")
			fi
			append_line "$PREFIX/etc/passwd" \
				"$SERVICE_USER:x:$(free_id "$PREFIX/etc/passwd"):${gid:-999}:cabinet-edge controller:/var/lib/$APP:/usr/sbin/nologin"
		else
			host useradd --system --gid "$READ_GROUP" --groups "$SERIAL_GROUP" --no-create-home \
				--home-dir "/var/lib/$APP" --shell /usr/sbin/nologin --comment "cabinet-edge controller" \
				"$SERVICE_USER"
		fi
	fi
	ensure_member "$SERVICE_USER" "$SERIAL_GROUP"
}

remove_accounts() {
	note "removing user $SERVICE_USER and groups $READ_GROUP, $ADMIN_GROUP"
	if [[ -n $PREFIX ]]; then
		rewrite_without "$PREFIX/etc/passwd" "$SERVICE_USER"
		rewrite_without "$PREFIX/etc/group" "$READ_GROUP"
		rewrite_without "$PREFIX/etc/group" "$ADMIN_GROUP"
		if [[ -f $PREFIX/etc/group ]] && user_in_group "$SERVICE_USER" "$SERIAL_GROUP"; then
			if ((DRY_RUN)); then
				say "[dry-run] remove $SERVICE_USER from group $SERIAL_GROUP"
			else
				awk -F: -v OFS=: -v g="$SERIAL_GROUP" -v u="$SERVICE_USER" '$1 == g {
					n = split($4, m, ","); out = ""
					for (i = 1; i <= n; i++) if (m[i] != u) out = (out == "" ? m[i] : out "," m[i])
					$4 = out } 1' "$PREFIX/etc/group" >"$PREFIX/etc/group.new"
				mv "$PREFIX/etc/group.new" "$PREFIX/etc/group"
			fi
		fi
		return 0
	fi
	if user_exists "$SERVICE_USER"; then host userdel "$SERVICE_USER"; fi
	if group_exists "$READ_GROUP"; then host groupdel "$READ_GROUP"; fi
	if group_exists "$ADMIN_GROUP"; then host groupdel "$ADMIN_GROUP"; fi
}

# ---- units ------------------------------------------------------------------------------------------

enable_unit() { # enable_unit UNIT
	if [[ -z $PREFIX ]]; then
		if ((DRY_RUN)) || ! systemctl is-enabled --quiet "$1" 2>/dev/null; then
			host systemctl enable "$1"
		fi
		return 0
	fi
	# --prefix: the same symlinks `systemctl enable` makes, from the unit's WantedBy=.
	local wanted_line wanted
	wanted_line=$(sed -n 's/^WantedBy=//p' "$SCRIPT_DIR/../systemd/$1" | tr '\n' ' ')
	for wanted in $wanted_line; do
		if [[ ! -L $UNIT_DIR/$wanted.wants/$1 ]]; then
			run mkdir -p "$UNIT_DIR/$wanted.wants"
			run ln -sfn "/etc/systemd/system/$1" "$UNIT_DIR/$wanted.wants/$1"
		fi
	done
}

disable_unit() { # disable_unit UNIT (stops it too)
	if [[ -z $PREFIX ]]; then
		if ((DRY_RUN)) || [[ -e $UNIT_DIR/$1 ]]; then
			host systemctl disable --now "$1"
		fi
		return 0
	fi
	local link
	while IFS= read -r link; do
		run rm -f -- "$link"
		((DRY_RUN)) || rmdir --ignore-fail-on-non-empty "$(dirname "$link")" 2>/dev/null || true
	done < <(find "$UNIT_DIR" -path "*.wants/$1" 2>/dev/null)
}

install_units() {
	local changed=0
	note "systemd units ($UNIT_DIR), CAN set-up: $CAN_MODE"
	if install_file "$SCRIPT_DIR/../systemd/$UNIT" "$UNIT_DIR/$UNIT" 0644; then changed=1; fi
	local u
	for u in "$UPDATE_PATH" "$UPDATE_UNIT"; do
		if [[ -f $SCRIPT_DIR/../systemd/$u ]] && install_file "$SCRIPT_DIR/../systemd/$u" "$UNIT_DIR/$u" 0644; then
			changed=1
		fi
	done
	case $CAN_MODE in
	unit)
		if install_file "$SCRIPT_DIR/../systemd/$CAN_UNIT" "$UNIT_DIR/$CAN_UNIT" 0644; then changed=1; fi
		if remove_path "$NETWORK_DIR/$CAN_NETWORK"; then changed=1; fi
		;;
	networkd)
		if [[ -e $UNIT_DIR/$CAN_UNIT ]]; then
			disable_unit "$CAN_UNIT"
			remove_path "$UNIT_DIR/$CAN_UNIT" || true
			changed=1
		fi
		if install_file "$SCRIPT_DIR/../systemd/$CAN_NETWORK" "$NETWORK_DIR/$CAN_NETWORK" 0644; then
			changed=1
		fi
		;;
	none) ;;
	esac
	if ((changed)); then host systemctl daemon-reload; fi
	enable_unit "$UNIT"
	if [[ -f $UNIT_DIR/$UPDATE_PATH ]]; then
		enable_unit "$UPDATE_PATH"
		# Watching from now on, not from the next boot (starting it never starts an update by itself).
		if ((START)) && { ((changed)) || { [[ -z $PREFIX ]] && ! systemctl is-active --quiet "$UPDATE_PATH"; }; }; then
			host systemctl start "$UPDATE_PATH"
		fi
	fi
	if [[ $CAN_MODE == unit ]]; then enable_unit "$CAN_UNIT"; fi
	if [[ $CAN_MODE == networkd ]] && ((changed)); then
		host systemctl enable --now systemd-networkd.service
		host systemctl restart systemd-networkd.service
	fi
}

install_udev() {
	note "udev rules for RS-485 adapters ($UDEV_DIR/$UDEV_RULES)"
	if install_file "$SCRIPT_DIR/udev/$UDEV_RULES" "$UDEV_DIR/$UDEV_RULES" 0644; then
		host udevadm control --reload
		host udevadm trigger --subsystem-match=tty --action=add
	fi
}

# ---- releases ---------------------------------------------------------------------------------------

detect_version() {
	[[ -n $VERSION ]] && return 0
	if [[ -n $WHEEL ]]; then
		# cabinet_edge-0.2.0-py3-none-any.whl -> 0.2.0
		VERSION=$(basename "$WHEEL" | cut -d- -f2)
	elif [[ -f $SOURCE/setup.cfg ]]; then
		VERSION=$(sed -n 's/^version[[:space:]]*=[[:space:]]*//p' "$SOURCE/setup.cfg" | head -n 1)
	fi
	[[ -n $VERSION ]] || die "cannot tell the version: give --version"
}

release_built() { [[ -f $RELEASES/$1/.cabinet-edge-release ]]; }

build_release() {
	local rel=$RELEASES/$VERSION
	if release_built "$VERSION" && ((FORCE == 0)); then
		note "release $VERSION already built ($rel)"
		return 0
	fi
	if [[ $(current_release) == "$VERSION" ]] && [[ -e $rel ]]; then
		die "release $VERSION is the running one; use another --version to rebuild it"
	fi
	note "building release $VERSION in $rel"
	remove_path "$rel" || true
	run mkdir -p "$RELEASES"
	if ((SKIP_VENV)); then
		run mkdir -p "$rel/bin"
	else
		local pkg=${WHEEL:-$SOURCE}
		if ! run "$PYTHON" -m venv "$rel" ||
			! run "$rel/bin/python" -m pip install --disable-pip-version-check --no-input --quiet \
				"${PIP_ARGS[@]}" "$pkg"; then
			remove_path "$rel" || true
			die "building the venv for $VERSION failed; nothing was switched"
		fi
	fi
	if [[ -f $SCRIPT_DIR/../docs/DEPLOY.md ]]; then
		install_file "$SCRIPT_DIR/../docs/DEPLOY.md" "$rel/share/doc/$APP/DEPLOY.md" 0644 || true
	fi
	write_file "$rel/.cabinet-edge-release" 0644 "version=$VERSION"
}

current_release() { # name of the release `current` points at, or nothing
	if [[ -L $CURRENT ]]; then basename "$(readlink "$CURRENT")"; fi
}

previous_release() {
	if [[ -L $PREVIOUS ]]; then basename "$(readlink "$PREVIOUS")"; fi
}

switch_to() { # switch_to VERSION: current -> VERSION, previous -> the old current
	local old
	old=$(current_release)
	[[ $old == "$1" ]] && return 0
	note "switching $CURRENT: ${old:-none} -> $1"
	symlink "$CURRENT" "releases/$1"
	if [[ -n $old ]]; then symlink "$PREVIOUS" "releases/$old"; fi
}

prune_releases() {
	local keep=$KEEP_RELEASES cur prev name n=0
	cur=$(current_release)
	prev=$(previous_release)
	[[ -d $RELEASES ]] || return 0
	while IFS= read -r name; do
		[[ $name == "$cur" || $name == "$prev" ]] && continue
		n=$((n + 1))
		if ((n > keep - 2)); then
			note "removing old release $name"
			remove_path "${RELEASES:?}/$name" || true
		fi
	done < <(find "$RELEASES" -mindepth 1 -maxdepth 1 -type d -printf '%T@ %f\n' | sort -rn | cut -d' ' -f2-)
}

# ---- config -----------------------------------------------------------------------------------------

CONFIG_CREATED=0

install_config() {
	local example=$SCRIPT_DIR/config.example.toml
	ensure_dir "$ETC" 0750 "root:$READ_GROUP"
	if [[ ! -f $example ]]; then
		warn "no $example: config not installed"
		return 0
	fi
	# The example of the installed version always sits beside the config, for comparing after updates.
	install_file "$example" "$ETC/config.toml.example" 0640 || true
	ensure_owner "$ETC/config.toml.example" "root:$READ_GROUP"
	if [[ -f $ETC/config.toml ]]; then
		note "keeping $ETC/config.toml; the example of this version is $ETC/config.toml.example"
	else
		note "new config $ETC/config.toml from the example: edit it before starting"
		install_file "$example" "$ETC/config.toml" 0640 || true
		ensure_owner "$ETC/config.toml" "root:$READ_GROUP"
		CONFIG_CREATED=1
	fi
}

# check_config VERSION: `edge config check` of the installed config with that release. Exit 2 of edge
# means invalid; the update stops before anything is switched.
check_config() {
	local edge=${EDGE_CMD:-$RELEASES/$1/bin/edge} rc=0
	[[ -f $ETC/config.toml ]] || return 0
	if ((DRY_RUN)); then
		say "[dry-run] $(quote "$edge" config check "$ETC/config.toml")"
		return 0
	fi
	if [[ ! -x $edge ]] && ((SKIP_VENV)); then
		note "config check skipped (--skip-venv, no edge executable)"
		return 0
	fi
	if ! "$edge" config check --help >/dev/null 2>&1; then
		die "$edge has no 'config check'; cannot validate $ETC/config.toml"
	fi
	say "+ $(quote "$edge" config check "$ETC/config.toml")"
	"$edge" config check "$ETC/config.toml" || rc=$?
	case $rc in
	0) ;;
	2) die "$ETC/config.toml is not valid for version $1 (see above); nothing was switched" 2 ;;
	*) die "'edge config check' failed with exit status $rc; nothing was switched" ;;
	esac
}

# ---- readiness --------------------------------------------------------------------------------------

# probe_ready VERSION: one look. Exit 0 and print an activation id when the service is up.
probe_ready() {
	if [[ -n $READY_CMD ]]; then
		CABINET_EDGE_RELEASE=$1 bash -c "$READY_CMD" >&2 || return 1
		printf 'hook'
		return 0
	fi
	[[ -n $PREFIX ]] && {
		printf 'prefix'
		return 0
	}
	local out
	out=$(systemctl show -p ActiveState -p ActiveEnterTimestampMonotonic "$UNIT") || return 1
	grep -qx 'ActiveState=active' <<<"$out" || return 1
	sed -n 's/^ActiveEnterTimestampMonotonic=//p' <<<"$out"
}

# wait_ready VERSION: Type=notify, so "active" means the daemon sent READY=1. It must then stay up, in
# the same activation, for SETTLE seconds (a crash and automatic restart changes the activation id).
wait_ready() {
	local deadline=$((SECONDS + READY_TIMEOUT)) id again
	if ((DRY_RUN)); then
		say "[dry-run] wait up to ${READY_TIMEOUT}s for $UNIT to report READY=1"
		return 0
	fi
	note "waiting up to ${READY_TIMEOUT}s for $UNIT ($1) to report READY=1"
	until id=$(probe_ready "$1"); do
		if ((SECONDS >= deadline)); then
			warn "$UNIT did not become ready within ${READY_TIMEOUT}s"
			return 1
		fi
		sleep 1
	done
	if ((SETTLE > 0)); then
		note "ready; checking it stays up for ${SETTLE}s"
		sleep "$SETTLE"
		if ! again=$(probe_ready "$1") || [[ $again != "$id" ]]; then
			warn "$UNIT did not stay up (restarted or failed within ${SETTLE}s)"
			return 1
		fi
	fi
	note "$UNIT is up with release $1"
}

# restart_and_check VERSION. `systemctl restart` of a Type=notify unit returns when READY=1 arrived or
# the start failed (bounded by TimeoutStartSec=); wait_ready then confirms it and that it stays up.
restart_and_check() {
	if ! host systemctl restart "$UNIT"; then
		warn "$UNIT did not start with release $1"
		return 1
	fi
	wait_ready "$1"
}

# activate VERSION: switch `current` to VERSION; when the service should run, restart it and roll back
# to the old release when the new one does not come up.
activate() {
	local new=$1 old
	old=$(current_release)
	if [[ $old == "$new" ]]; then
		note "release $new is already current"
		return 0
	fi
	switch_to "$new"
	if ((START == 0)) || ((CONFIG_CREATED)) || [[ ! -f $ETC/config.toml ]]; then
		if ((START)); then note "not starting: edit $ETC/config.toml first (docs/DEPLOY.md)"; fi
		return 0
	fi
	if restart_and_check "$new"; then
		return 0
	fi
	if [[ -z $old ]]; then
		die "release $new does not come up and there is no previous release: see journalctl -u $APP" 3
	fi
	warn "rolling back to $old"
	host journalctl -u "$APP" -n 30 --no-pager || true
	symlink "$CURRENT" "releases/$old"
	if [[ $(previous_release) == "$old" ]]; then remove_path "$PREVIOUS" || true; fi
	if restart_and_check "$old"; then
		die "update to $new failed; rolled back to $old, which is running" 3
	fi
	die "update to $new failed and $old does not come up either: see journalctl -u $APP" 4
}

# ---- actions ----------------------------------------------------------------------------------------

preflight() {
	if [[ -z $PREFIX ]] && ((DRY_RUN == 0)) && [[ $(id -u) != 0 ]]; then
		die "run as root (sudo $0 ...), or use --dry-run / --prefix"
	fi
	if [[ -z $PREFIX ]] && [[ -r /etc/os-release ]]; then
		local os
		# In a subshell: os-release sets VERSION, which is ours.
		# shellcheck disable=SC1091
		os=$(. /etc/os-release && printf '%s:%s:%s' "${ID:-}" "${ID_LIKE:-}" "${PRETTY_NAME:-unknown}")
		case $os in
		debian:* | raspbian:* | *:*debian*:*) ;;
		*) warn "not Debian or Raspberry Pi OS (${os##*:}); continuing" ;;
		esac
	fi
	if [[ $ACTION != install ]] || ((SKIP_VENV)); then return 0; fi
	if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
		die "$PYTHON is missing or older than 3.11"
	fi
	if [[ -z $PREFIX ]] && ((APT)) && command -v dpkg-query >/dev/null; then
		local missing=() p
		for p in "${APT_PACKAGES[@]}"; do
			dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
		done
		if ((${#missing[@]})); then
			host apt-get install -y --no-install-recommends "${missing[@]}"
		fi
	fi
}

print_next_steps() {
	cat <<EOF

Next steps (docs/DEPLOY.md):
  CAN HAT (MCP2515): the overlay is not applied automatically. Add to /boot/firmware/config.txt
  (/boot/config.txt before bookworm), matching the crystal on the HAT, then reboot:
      dtparam=spi=on
      dtoverlay=mcp2515-can0,oscillator=12000000,interrupt=25
  Then:
      sudoedit /etc/$APP/config.toml
      edge config check /etc/$APP/config.toml
      sudo systemctl start $APP && edge status
  Technicians: sudo usermod -aG $READ_GROUP NAME  (admins also: -aG $READ_GROUP,$ADMIN_GROUP)
EOF
}

do_install() {
	detect_version
	[[ $VERSION =~ ^[A-Za-z0-9._+-]+$ ]] || die "bad version '$VERSION'"
	if [[ -z $WHEEL ]] && ((SKIP_VENV == 0)) && [[ ! -f $SOURCE/pyproject.toml && ! -f $SOURCE/setup.cfg ]]; then
		die "$SOURCE is not a cabinet-edge source tree (give --source DIR or --wheel FILE)"
	fi
	note "installing $APP $VERSION into ${PREFIX:-/}"
	ensure_accounts
	ensure_dir "$OPT" 0755
	ensure_dir "$RELEASES" 0755
	ensure_dir "$DATA" 0750 "$SERVICE_USER:$READ_GROUP"
	build_release
	install_config
	check_config "$VERSION"
	install_units
	install_udev
	if [[ ! -L $BIN_LINK ]] || [[ $(readlink "$BIN_LINK") != /opt/$APP/current/bin/edge ]]; then
		run mkdir -p "$(dirname "$BIN_LINK")"
		symlink "$BIN_LINK" "/opt/$APP/current/bin/edge"
	fi
	activate "$VERSION"
	prune_releases
	print_next_steps
}

do_rollback() {
	local prev
	prev=${ROLLBACK_TO:-$(previous_release)}
	if [[ -z $prev ]] || [[ ! -d $RELEASES/$prev ]]; then die "no previous release to roll back to"; fi
	release_built "$prev" || die "release $prev is not complete; not switching to it"
	note "rolling back from $(current_release) to $prev"
	# Advisory only: a rollback is what the operator asked for, even when the old release would reject
	# a config already edited for the new one (it then fails to start, and we say so).
	(check_config "$prev") || warn "the config check with $prev failed; rolling back anyway"
	switch_to "$prev"
	if ((START)); then
		restart_and_check "$prev" || die "$prev does not come up either: see journalctl -u $APP" 4
	fi
}

do_uninstall() {
	note "uninstalling $APP from ${PREFIX:-/}"
	disable_unit "$UNIT"
	disable_unit "$CAN_UNIT"
	disable_unit "$UPDATE_PATH"
	if remove_path "$UNIT_DIR/$UNIT" "$UNIT_DIR/$CAN_UNIT" "$UNIT_DIR/$UPDATE_PATH" "$UNIT_DIR/$UPDATE_UNIT" \
		"$NETWORK_DIR/$CAN_NETWORK"; then
		host systemctl daemon-reload
	fi
	if remove_path "$UDEV_DIR/$UDEV_RULES"; then host udevadm control --reload; fi
	# The update installer's private copies (edge/remote/installer.py): transient, never config or data.
	remove_path "$BIN_LINK" "$OPT" "$PREFIX/var/lib/$APP-installer" || true
	if ((PURGE)); then
		remove_path "$ETC" "$DATA" || true
		remove_accounts
	else
		note "kept $ETC (config), $DATA (data), user and groups; --purge removes them"
	fi
}

parse_args() {
	while (($#)); do
		case $1 in
		--prefix) PREFIX=${2:?--prefix needs a directory}; shift ;;
		--prefix=*) PREFIX=${1#*=} ;;
		--dry-run) DRY_RUN=1 ;;
		--uninstall) ACTION=uninstall ;;
		--rollback) ACTION=rollback ;;
		--to) ROLLBACK_TO=${2:?--to needs a release}; shift ;;
		--to=*) ROLLBACK_TO=${1#*=} ;;
		--purge) PURGE=1 ;;
		--source) SOURCE=${2:?--source needs a directory}; shift ;;
		--source=*) SOURCE=${1#*=} ;;
		--wheel) WHEEL=${2:?--wheel needs a file}; shift ;;
		--wheel=*) WHEEL=${1#*=} ;;
		--version) VERSION=${2:?--version needs a value}; shift ;;
		--version=*) VERSION=${1#*=} ;;
		--python) PYTHON=${2:?--python needs an interpreter}; shift ;;
		--python=*) PYTHON=${1#*=} ;;
		--pip-arg) PIP_ARGS+=("${2:?--pip-arg needs a value}"); shift ;;
		--pip-arg=*) PIP_ARGS+=("${1#*=}") ;;
		--can) CAN_MODE=${2:?--can needs unit, networkd or none}; shift ;;
		--can=*) CAN_MODE=${1#*=} ;;
		--no-start) START=0 ;;
		--no-apt) APT=0 ;;
		--force) FORCE=1 ;;
		--skip-venv) SKIP_VENV=1 ;;
		--ready-timeout) READY_TIMEOUT=${2:?}; shift ;;
		--ready-timeout=*) READY_TIMEOUT=${1#*=} ;;
		--settle) SETTLE=${2:?}; shift ;;
		--settle=*) SETTLE=${1#*=} ;;
		--keep) KEEP_RELEASES=${2:?}; shift ;;
		--keep=*) KEEP_RELEASES=${1#*=} ;;
		-h | --help) usage; exit 0 ;;
		*) usage >&2; die "unknown option: $1" 64 ;;
		esac
		shift
	done
	case $CAN_MODE in unit | networkd | none) ;; *) die "--can must be unit, networkd or none" 64 ;; esac
	[[ $READY_TIMEOUT =~ ^[0-9]+$ && $SETTLE =~ ^[0-9]+$ && $KEEP_RELEASES =~ ^[0-9]+$ ]] ||
		die "--ready-timeout, --settle and --keep take whole numbers" 64
	((KEEP_RELEASES >= 2)) || KEEP_RELEASES=2
	((PURGE == 0)) || [[ $ACTION == uninstall ]] || die "--purge goes with --uninstall" 64
	[[ -z $ROLLBACK_TO ]] || [[ $ACTION == rollback ]] || die "--to goes with --rollback" 64
	[[ -z $ROLLBACK_TO || $ROLLBACK_TO =~ ^[A-Za-z0-9._+-]+$ ]] || die "bad release name '$ROLLBACK_TO'" 64
	((SKIP_VENV == 0)) || [[ -n $PREFIX ]] || die "--skip-venv is for tests and needs --prefix" 64
	if [[ -n $PREFIX ]]; then
		((DRY_RUN)) || mkdir -p "$PREFIX" || die "cannot create $PREFIX"
		PREFIX=$(realpath -m "$PREFIX")
		[[ $PREFIX != / ]] || PREFIX=""
	fi
	if [[ -n $WHEEL ]]; then
		[[ -f $WHEEL ]] || die "no such wheel: $WHEEL"
		WHEEL=$(realpath "$WHEEL")
	fi
	SOURCE=$(realpath -m "${SOURCE:-$REPO_DIR}")
}

main() {
	parse_args "$@"
	OPT=$PREFIX/opt/$APP
	RELEASES=$OPT/releases
	CURRENT=$OPT/current
	PREVIOUS=$OPT/previous
	ETC=$PREFIX/etc/$APP
	DATA=$PREFIX/var/lib/$APP
	UNIT_DIR=$PREFIX/etc/systemd/system
	NETWORK_DIR=$PREFIX/etc/systemd/network
	UDEV_DIR=$PREFIX/etc/udev/rules.d
	BIN_LINK=$PREFIX/usr/local/bin/edge
	HOST_LOG=$PREFIX/var/log/$APP-install.host-actions
	preflight
	if ((DRY_RUN == 0)) && command -v flock >/dev/null; then
		mkdir -p "$PREFIX/run/lock"
		exec 9>"$PREFIX/run/lock/$APP-install.lock"
		flock -n 9 || die "another install.sh is running"
	fi
	case $ACTION in
	install) do_install ;;
	rollback) do_rollback ;;
	uninstall) do_uninstall ;;
	esac
}

main "$@"
