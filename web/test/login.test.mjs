// The login URL contract (src/api.js): where the page sends a user without
// a token, and how it takes the token the login service sends back.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loginTarget, takeToken } from '../src/api.js';

test('the token comes from ?token= or #token= and leaves the URL, other parameters kept', () => {
  assert.deepEqual(takeToken('http://gw/?token=abc'), { token: 'abc', rest: 'http://gw/' });
  assert.deepEqual(takeToken('http://gw/#token=abc'), { token: 'abc', rest: 'http://gw/' });
  assert.deepEqual(takeToken('http://gw/?live=bbox&token=old#token=new&x=1'), { token: 'new', rest: 'http://gw/?live=bbox#x=1' });
  assert.deepEqual(takeToken('http://gw/?live=bbox'), { token: null, rest: 'http://gw/?live=bbox' });
  assert.deepEqual(takeToken('http://gw/#token='), { token: null, rest: 'http://gw/' });
});

test('the login URL gets return_to = this page without a token, its own query kept', () => {
  assert.equal(
    loginTarget('https://login.example.org/fieldcast?app=map', 'http://gw:8080/?live=bbox&token=stale#token=x'),
    'https://login.example.org/fieldcast?app=map&return_to=http%3A%2F%2Fgw%3A8080%2F%3Flive%3Dbbox',
  );
  assert.equal(loginTarget('/login', 'http://gw:8080/'), 'http://gw:8080/login?return_to=http%3A%2F%2Fgw%3A8080%2F');
});
