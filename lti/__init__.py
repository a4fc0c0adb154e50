"""LTI 1.3: this server as a tool an LMS (Moodle, Canvas, Blackboard, Brightspace) launches.

- `tool`: pylti1p3's request, cookie, session, redirect and tool-configuration abstractions for aiohttp, and the
  id_token validation (pylti1p3 checks the RS256 signature against the platform's JWKS, the registration, the
  deployment and the message) with each refusal named.
- `keys`: our RSA key pair (in Postgres, made once) and the public JWKS.
- `routes`: OIDC login initiation, the launch (student -> their session's join flow, instructor -> the sessions
  list as staff, deep linking -> a signed LtiDeepLinkingResponse), /.well-known/jwks.json and the admin page.

A feature room beside signaling: it reaches sessions and accounts through proctor.store and proctor.accounts only,
and the web room hands it what staff pages need (lti.routes.StaffPages) when it registers the routes.
"""
