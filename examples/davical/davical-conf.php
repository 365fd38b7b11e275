<?php
// /etc/davical/127.0.0.1-conf.php: DAViCal's configuration for the loopback virtual
// host of apache-davical.conf (DAViCal picks /etc/davical/<SERVER_NAME>-conf.php).
$c->pg_connect[] = 'dbname=davical user=davical_app';
$c->system_name = 'DAViCal';
$c->hide_TODO = false;   // else VTODOs vanish from what sharees see

// davproxy proxy-auth: believe the user davproxy names in X-Remote-User (davproxy
// strips any client-sent copy).  Only safe because this host listens on loopback.
if ( !empty($_SERVER['HTTP_X_REMOTE_USER']) ) {
  $_SERVER['REMOTE_USER'] = $_SERVER['HTTP_X_REMOTE_USER'];
  $_SERVER['AUTH_TYPE'] = 'ProxyHeader';
  unset($_SERVER['AUTHORIZATION'], $_SERVER['HTTP_AUTHORIZATION'],
        $_SERVER['PHP_AUTH_USER'], $_SERVER['PHP_AUTH_PW']);
}
$c->authenticate_hook['server_auth_type'] = 'ProxyHeader';
include_once('AuthPlugins.php');   // auth_external: the named user, no password check
