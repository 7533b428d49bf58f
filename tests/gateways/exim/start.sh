#!/bin/sh
# The Exim gateway image's own entry point (labgen does not replace it). What it relies on is
# labgen's gateway-image contract (docs/gateway-image.md): its configuration directory mounted
# read-only at /lab/config, the lab's certificates at /lab/certs, the lab DNS in resolv.conf.
set -eu
# Exim runs deliveries as Debian-exim and refuses a configuration file that the wrong user owns:
# the mounted files belong to whoever ran labgen, so copy them into place with Exim's owners.
install -o root -g root -m 0644 /lab/config/exim4.conf /etc/exim4/exim4.conf
install -d -o Debian-exim -g Debian-exim -m 0750 /run/gw-certs
for f in /lab/certs/*; do
  install -o Debian-exim -g Debian-exim -m 0640 "$f" /run/gw-certs/
done
install -d -o Debian-exim -g adm -m 2750 /var/log/exim4
install -d -o Debian-exim -g Debian-exim -m 0750 /var/spool/exim4
# A foreground daemon on port 25 that runs its queue every second (lab timing).
exec exim -bdf -q1s
