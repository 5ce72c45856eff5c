// A real OpenID Provider (panva/oidc-provider) for the identity tests, on loopback only.
// Usage: node server.mjs CONFIG.json  -> prints "oidc-provider listening on ISSUER" once ready.
// Accounts are re-read from their file at every lookup so tests can change a user's claims between logins.
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as querystring from 'node:querystring';

import Provider, { errors } from 'oidc-provider';

const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));

function readAccounts() {
  return JSON.parse(fs.readFileSync(config.accounts_file, 'utf8'));
}

function escapeHtml(value) {
  return String(value).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
}

function loginPage(uid, clientId, message) {
  return `<!DOCTYPE html><html><head><meta charset="utf-8"><title>Sign in</title></head><body>
<h1>Sign in to ${escapeHtml(clientId)}</h1>
${message ? `<p id="error">${escapeHtml(message)}</p>` : ''}
<form method="post" action="/interaction/${escapeHtml(uid)}/login" autocomplete="off">
  <label>Login <input id="login" name="login" type="text" required autofocus></label>
  <label>Password <input id="password" name="password" type="password" required></label>
  <button id="submit" type="submit">Sign in</button>
</form></body></html>`;
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    let data = '';
    req.setEncoding('utf8');
    req.on('data', (chunk) => {
      data += chunk;
      if (data.length > 65536) reject(new Error('body too large'));
    });
    req.on('end', () => resolve(querystring.parse(data)));
    req.on('error', reject);
  });
}

const server = http.createServer();
server.listen(config.port || 0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const apiResource = config.api_resource;

  const provider = new Provider(issuer, {
    clients: config.clients,
    jwks: config.jwks,
    cookies: { keys: config.cookie_keys },
    extraClientMetadata: { properties: ['groups'] },
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['preferred_username', 'given_name', 'family_name', 'name'],
      groups: ['groups'],
    },
    scopes: ['openid', 'email', 'profile', 'groups', 'api'],
    async findAccount(ctx, id) {
      const account = readAccounts()[id];
      if (!account) return undefined;
      return {
        accountId: id,
        async claims() {
          return {
            sub: id,
            email: account.email,
            email_verified: true,
            preferred_username: id,
            name: account.name || id,
            groups: account.groups || [],
          };
        },
      };
    },
    async extraTokenClaims(ctx, token) {
      // Machine clients carry their groups in their access tokens, so the API maps them like users.
      if (token.kind === 'ClientCredentials') {
        return { groups: ctx.oidc.client.groups || [] };
      }
      return undefined;
    },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      rpInitiatedLogout: {
        enabled: true,
        // The default page pulls a web font from the internet; this one is self-contained.
        async logoutSource(ctx, form) {
          ctx.body = `<!DOCTYPE html><html><head><meta charset="utf-8"><title>Sign out</title></head><body>
<h1>Sign out of ${escapeHtml(ctx.host)}?</h1>${form}
<button id="confirm-logout" type="submit" form="op.logoutForm" value="yes" name="logout">Yes, sign me out</button>
<button type="submit" form="op.logoutForm">No, stay signed in</button></body></html>`;
        },
        async postLogoutSuccessSource(ctx) {
          ctx.body = '<!DOCTYPE html><html><head><meta charset="utf-8"><title>Signed out</title></head>'
            + '<body><h1 id="signed-out">Signed out</h1></body></html>';
        },
      },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => undefined,
        useGrantedResource: () => false,
        async getResourceServerInfo(ctx, resourceIndicator) {
          if (resourceIndicator !== apiResource) throw new errors.InvalidTarget();
          return {
            scope: 'api',
            audience: apiResource,
            accessTokenTTL: 300,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
    pkce: { required: () => true },
  });
  provider.on('server_error', (ctx, err) => console.error('oidc-provider server_error', err));
  provider.on('end_session.error', (ctx, err) => console.error('end_session.error', err, err.cause));

  const callback = provider.callback();
  server.on('request', async (req, res) => {
    const match = /^\/interaction\/([\w-]+)(\/login)?$/.exec(req.url.split('?')[0]);
    if (!match) {
      callback(req, res);
      return;
    }
    try {
      const details = await provider.interactionDetails(req, res);
      const { uid, prompt, params } = details;
      if (prompt.name === 'login') {
        if (req.method === 'POST' && match[2]) {
          const body = await readBody(req);
          const account = readAccounts()[body.login];
          if (!account || account.password !== body.password) {
            res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
            res.end(loginPage(uid, params.client_id, 'Invalid login or password.'));
            return;
          }
          await provider.interactionFinished(req, res, { login: { accountId: body.login } }, {
            mergeWithLastSubmission: false,
          });
          return;
        }
        res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
        res.end(loginPage(uid, params.client_id, ''));
        return;
      }
      if (prompt.name === 'consent') {
        // The test clients are first-party: consent is granted without asking.
        const grant = details.grantId
          ? await provider.Grant.find(details.grantId)
          : new provider.Grant({ accountId: details.session.accountId, clientId: params.client_id });
        const missing = prompt.details;
        if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
        if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
        if (missing.missingResourceScopes) {
          for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes)) {
            grant.addResourceScope(indicator, scopes.join(' '));
          }
        }
        const grantId = await grant.save();
        await provider.interactionFinished(req, res, details.grantId ? {} : { consent: { grantId } }, {
          mergeWithLastSubmission: true,
        });
        return;
      }
      res.writeHead(400, { 'content-type': 'text/plain' });
      res.end(`unsupported prompt ${prompt.name}`);
    } catch (err) {
      console.error('interaction error', err);
      res.writeHead(400, { 'content-type': 'text/plain' });
      res.end(`interaction failed: ${err.message}`);
    }
  });
  console.log(`oidc-provider listening on ${issuer}`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
