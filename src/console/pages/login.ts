/**
 * The sign-in page. The form posts to src/http/auth.ts's POST /console/login (fields name, password and
 * the hidden next), which checks the password, sets the pcp_session cookie and redirects; console.js
 * submits it with fetch so a refusal is shown here, in the console's own style.
 */
import { html, type Html } from '../html.js';

export function loginPage(p: { next: string; assetVersion: string; usersConfigured: boolean; sso: boolean }): Html {
  const v = p.assetVersion;
  return html`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in · PCP console</title>
<link rel="icon" href="/console/assets/favicon.svg?v=${v}" type="image/svg+xml">
<link rel="stylesheet" href="/console/assets/console.css?v=${v}">
<script src="/console/assets/console.js?v=${v}" defer></script>
</head>
<body class="login" data-page="login">
<main class="login-card">
  <div class="brand"><span class="brand-mark"></span>PCP console</div>
  <h1>Sign in</h1>
  <p class="muted">Domain deletions, their failures and replays.</p>
  ${p.usersConfigured ? '' : html`<div class="message info">${p.sso
    ? 'Sign-in goes through your single sign-on proxy; no console users are configured here.'
    : 'Console sign-in is off: no console users are configured (CONSOLE_USERS). Scripts can still use a bearer token.'}</div>`}
  <div id="login-error" hidden></div>
  <form method="post" action="/console/login" id="login-form">
    <input type="hidden" name="next" value="${p.next}">
    <label class="field">Name<input type="text" id="name" name="name" autocomplete="username" required autofocus></label>
    <label class="field">Password<input type="password" id="password" name="password" autocomplete="current-password" required></label>
    <button type="submit" class="btn primary">Sign in</button>
  </form>
  <p class="foot">Operators can replay and resolve alarms; viewers can look.</p>
</main>
</body>
</html>
`;
}
