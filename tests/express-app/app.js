// The Node side of the interop tests (tests/express_interop.rs): the counter app's routes on
// express-session, with the store the environment names, so the Rust counter in
// `SESSION_COMPAT=express` mode and this app can share one session.
//
// Environment:
//   PORT            port on 127.0.0.1 (default 3100)
//   SESSION_SECRET  express's secret; several separated by commas (the first signs)
//   SESSION_STORE   connect-redis://HOST:PORT or connect-pg://USER@HOST:PORT/DB
//   SESSION_PREFIX  connect-redis key prefix (default "sess:")
//   SESSION_TABLE   connect-pg-simple table (default "session")
'use strict';

const express = require('express');
const session = require('express-session');

const MAX_AGE = 15 * 60 * 1000;

function storeFromEnv() {
  const spec = process.env.SESSION_STORE || '';
  if (spec.startsWith('connect-redis://')) {
    const { createClient } = require('redis');
    const { RedisStore } = require('connect-redis');
    const client = createClient({ url: 'redis://' + spec.slice('connect-redis://'.length) });
    client.on('error', (err) => console.error('redis:', err.message));
    const ready = client.connect();
    return { store: new RedisStore({ client, prefix: process.env.SESSION_PREFIX || 'sess:' }), ready };
  }
  if (spec.startsWith('connect-pg://')) {
    const pg = require('pg');
    const PgStore = require('connect-pg-simple')(session);
    const pool = new pg.Pool({ connectionString: 'postgres://' + spec.slice('connect-pg://'.length) });
    const store = new PgStore({
      pool,
      tableName: process.env.SESSION_TABLE || 'session',
      createTableIfMissing: true,
    });
    return { store, ready: Promise.resolve() };
  }
  throw new Error('SESSION_STORE must be connect-redis://HOST:PORT or connect-pg://USER@HOST:PORT/DB, not ' + JSON.stringify(spec));
}

const { store, ready } = storeFromEnv();
const app = express();
app.use(express.urlencoded({ extended: false }));
app.use(session({
  secret: (process.env.SESSION_SECRET || 'keyboard cat').split(','),
  store,
  resave: false,
  saveUninitialized: false,
  cookie: { maxAge: MAX_AGE },
}));

app.get('/', (req, res) => {
  req.session.views = (req.session.views || 0) + 1;
  res.type('text').send(`You visited ${req.session.views} times`);
});

app.get('/peek', (req, res) => {
  res.type('text').send(`views: ${req.session.views || 0}`);
});

app.post('/login', (req, res, next) => {
  const name = String(req.body.name || '').trim();
  if (!name) return res.status(422).type('text').send('name must not be empty');
  // express drops the data on regenerate; keep it, as the Rust app does.
  const { views, cart } = req.session;
  req.session.regenerate((err) => {
    if (err) return next(err);
    if (views !== undefined) req.session.views = views;
    if (cart !== undefined) req.session.cart = cart;
    req.session.user = { name };
    req.session.save((err) => (err ? next(err) : res.redirect(303, '/')));
  });
});

app.get('/me', (req, res) => {
  const user = req.session.user;
  res.type('text').send(user && user.name ? `user: ${user.name}` : 'user: none');
});

app.post('/cart', (req, res) => {
  const item = String(req.body.item || '').trim();
  if (!item || item.includes('\n')) return res.status(422).type('text').send('item must be one non-empty line');
  req.session.cart = (req.session.cart || []).concat(item);
  res.redirect(303, '/cart');
});

app.get('/cart', (req, res) => {
  res.type('text').send((req.session.cart || []).map((item) => item + '\n').join(''));
});

app.post('/logout', (req, res, next) => {
  req.session.destroy((err) => {
    if (err) return next(err);
    res.clearCookie('connect.sid', { path: '/' });
    res.redirect(303, '/');
  });
});

const port = Number(process.env.PORT || 3100);
ready.then(() => {
  app.listen(port, '127.0.0.1', () => console.log(`express app listening on http://127.0.0.1:${port}`));
}, (err) => {
  console.error('store:', err.message);
  process.exit(1);
});
