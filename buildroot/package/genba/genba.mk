################################################################################
#
# genba: built from this repository with Buildroot's cargo package infrastructure
#
################################################################################

GENBA_VERSION = 0.1.0
GENBA_SITE = $(BR2_EXTERNAL_GENBA_PATH)/..
GENBA_SITE_METHOD = local
GENBA_LICENSE = MIT or Apache-2.0
GENBA_CARGO_BUILD_OPTS = -p genba
# The units run as genba; the user is made at build time (the root file system is read-only).
GENBA_USERS = genba -1 genba -1 * /var/lib/genba - - Genba appliance
# The firmware has its own workspace; only the appliance is built here.
GENBA_SUBDIR =

define GENBA_INSTALL_TARGET_CMDS
	$(INSTALL) -D -m 0755 $(@D)/target/$(RUSTC_TARGET_NAME)/release/genba $(TARGET_DIR)/usr/bin/genba
	$(INSTALL) -D -m 0644 $(@D)/systemd/genba.sysusers.conf $(TARGET_DIR)/usr/lib/sysusers.d/genba.conf
	$(INSTALL) -D -m 0644 $(@D)/systemd/70-genba-boards.rules \
		$(TARGET_DIR)/usr/lib/udev/rules.d/70-genba-boards.rules
	$(INSTALL) -D -m 0644 $(@D)/systemd/journald.conf.d/genba.conf \
		$(TARGET_DIR)/usr/lib/systemd/journald.conf.d/genba.conf
endef

define GENBA_INSTALL_INIT_SYSTEMD
	$(foreach unit,genba-broker.service genba-bridge.service genba-slack.service \
		genba-recorder.service genba-exment.service genba.target, \
		$(INSTALL) -D -m 0644 $(@D)/systemd/$(unit) $(TARGET_DIR)/usr/lib/systemd/system/$(unit)$(sep))
	$(foreach unit,genba-broker.service genba-bridge.service genba-slack.service \
		genba-recorder.service genba-exment.service, \
		$(INSTALL) -D -m 0644 $(@D)/systemd/genba-role.conf \
			$(TARGET_DIR)/usr/lib/systemd/system/$(unit).d/10-genba-role.conf$(sep))
	mkdir -p $(TARGET_DIR)/etc/systemd/system/multi-user.target.wants
	ln -sf /usr/lib/systemd/system/genba.target \
		$(TARGET_DIR)/etc/systemd/system/multi-user.target.wants/genba.target
endef

$(eval $(cargo-package))
