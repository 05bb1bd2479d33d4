#!/bin/bash
# Entrypoint of Kapal's local WordPress image (localhost/kapal/wordpress, built by
# scripts/build-images from Debian's wordpress, apache2 and libapache2-mod-php packages). It honours
# the part of the official `wordpress:*-apache` image's contract that Kapal's catalog uses; it is
# not that image's script:
#
#   /var/www/html (the volume): WordPress is copied there on the first start (when it holds no
#     index.php and no wp-includes/version.php), owned by www-data (uid 33) when started as root
#   wp-config.php: written once when missing and some WORDPRESS_* variable is set, from
#     /usr/src/wordpress/wp-config-docker.php, which reads WORDPRESS_DB_HOST, WORDPRESS_DB_USER,
#     WORDPRESS_DB_PASSWORD, WORDPRESS_DB_NAME, WORDPRESS_TABLE_PREFIX, WORDPRESS_DEBUG and
#     WORDPRESS_CONFIG_EXTRA (PHP code) at every request; its keys and salts are random, made here
#   port 80: Apache (prefork + mod_php) started as root, serving as www-data
set -euo pipefail

if [[ "${1:-}" == apache2* ]]; then
  uid=$(id -u); gid=$(id -g)
  if [ "$uid" = 0 ]; then user=www-data; group=www-data; else user=$uid; group=$gid; fi

  if [ ! -e index.php ] && [ ! -e wp-includes/version.php ]; then
    echo >&2 "WordPress not found in $PWD - copying now..."
    if [ -n "$(find . -mindepth 1 -maxdepth 1 -not -name wp-content)" ]; then
      echo >&2 "WARNING: $PWD is not empty! (copying anyhow)"
    fi
    args=(--create --file - --directory /usr/src/wordpress --one-file-system)
    [ "$uid" = 0 ] && args+=(--owner "$user" --group "$group")
    # an existing wp-content (e.g. a volume of its own) is kept
    [ -d wp-content ] && args+=(--exclude ./wp-content)
    extract=(--extract --file -)
    [ "$uid" = 0 ] && extract+=(--same-owner)
    tar "${args[@]}" . | tar "${extract[@]}"
    echo >&2 "Complete! WordPress has been successfully copied to $PWD"
  fi

  wp_envs=("${!WORDPRESS_@}")
  if [ ! -s wp-config.php ] && [ "${#wp_envs[@]}" -gt 0 ]; then
    echo >&2 "No 'wp-config.php' found in $PWD, but 'WORDPRESS_...' variables supplied; copying 'wp-config-docker.php' (${wp_envs[*]})"
    php -r '
      $c = file_get_contents("/usr/src/wordpress/wp-config-docker.php");
      $c = preg_replace_callback("/put your unique phrase here/", function () {
        return bin2hex(random_bytes(32));
      }, $c);
      file_put_contents("wp-config.php", $c);'
    [ "$uid" = 0 ] && chown "$user:$group" wp-config.php
  fi
fi

exec "$@"
