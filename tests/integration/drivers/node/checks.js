// node-postgres (npm `pg`, pinned in package-lock.json) scenarios for tests/integration/test_drivers.py.
//
// Reads {"jobs": [{label, dsn, scenario, args}]} on stdin, runs each job on a new connection and
// prints one JSON line per job: {label, steps: [[name, value], ...], notes, error}. Values are
// canonical so that every driver reports the same: cells as strings (null stays null), command
// results as row counts, expected server errors as ["error", SQLSTATE]. An unexpected error ends
// the job: error = {step, sqlstate, message}. The steps are spelled out in test_drivers.py.
//
// node-postgres has no batch or pipeline API: each query is its own Sync.
'use strict'

const { Client } = require('pg')

const cell = (v) => (v === null || v === undefined ? null : String(v))

class Job {
  constructor(label) {
    this.label = label
    this.steps = []
    this.notes = {}
    this.current = 'connect'
  }
  step(name, value) {
    this.steps.push([name, value])
  }
}

async function connect(dsn, job) {
  const client = new Client({ connectionString: dsn, connectionTimeoutMillis: 10000,
                              query_timeout: 20000 })
  // What the server asked for at login: the SASL mechanisms offered, and whether the server's
  // final SCRAM message arrived (node-postgres checks its signature, or fails the connect).
  const auth = { mechanisms: null, sasl_final: false }
  client.connection.on('authenticationSASL', (msg) => { auth.mechanisms = msg.mechanisms })
  client.connection.on('authenticationSASLFinal', () => { auth.sasl_final = true })
  client.connection.on('authenticationMD5Password', () => { auth.mechanisms = ['md5'] })
  client.connection.on('authenticationCleartextPassword', () => { auth.mechanisms = ['password'] })
  await client.connect()
  if (job) job.notes.auth = auth
  return client
}

async function rows(client, text, values) {
  const r = await client.query({ text, values, rowMode: 'array' })
  return r.rows.map((row) => row.map(cell))
}

async function count(client, text, values) {
  return (await client.query({ text, values })).rowCount
}

// Runs fn and records its value, or ["error", SQLSTATE] when the server reports an error.
async function expectError(job, name, fn) {
  job.current = name
  try {
    job.step(name, await fn())
  } catch (e) {
    if (!e.code) throw e
    job.step(name, ['error', e.code])
  }
}

// ------------------------------------------------------------------------------ scenarios

const CRUD_INSERT = (t) => `INSERT INTO ${t} (k, v, n) VALUES ($1, $2, $3) RETURNING k, v, n`
const CRUD_SELECT = (t) => `SELECT k, v, n FROM ${t} WHERE k = $1`
const CRUD_UPDATE = (t) => `UPDATE ${t} SET v = v || '!', n = n + 10 WHERE k = $1`
const CRUD_DELETE = (t) => `DELETE FROM ${t} WHERE k = $1`
const crudValue = (tag, i) => `${tag}-${i}-ü€`

const scenarios = {
  async login(c, job, args) {
    job.step('select_1', await rows(c, 'SELECT 1'))
    job.current = 'wrong_password'
    try {
      const bad = await connect(args.bad_dsn, null)
      await bad.end()
      job.step('wrong_password', 'connected')
    } catch (e) {
      job.step('wrong_password', ['error', e.code || null])
    }
  },

  async crud(c, job, args) {
    for (const { table: t, keys } of args.tables) {
      for (const [i, k] of keys.entries()) {
        job.current = `${t}.insert.${i}`
        job.step(job.current, await rows(c, CRUD_INSERT(t), [k, crudValue(args.tag, i), 7 * i + 1]))
      }
      for (const [i, k] of keys.entries()) {
        job.current = `${t}.select.${i}`
        job.step(job.current, await rows(c, CRUD_SELECT(t), [k]))
      }
      for (const [i, k] of keys.entries()) {
        job.current = `${t}.update.${i}`
        job.step(job.current, await count(c, CRUD_UPDATE(t), [k]))
      }
      for (const i of [0, 1]) {
        job.current = `${t}.delete.${i}`
        job.step(job.current, await count(c, CRUD_DELETE(t), [keys[i]]))
      }
      for (const [i, k] of keys.entries()) {
        job.current = `${t}.after.${i}`
        job.step(job.current, await rows(c, CRUD_SELECT(t), [k]))
      }
    }
  },

  // Named query configs: node-postgres parses a named statement once per connection and then
  // only binds and executes it (a server-side prepared statement from its first use).
  async prepared(c, job, args) {
    const [a, b] = args.keys
    const upd = (k) => ({ name: 'drv_upd', text: 'UPDATE drv_int SET n = n + 1 WHERE k = $1 RETURNING n',
                          values: [k], rowMode: 'array' })
    const sel = (k) => ({ name: 'drv_sel', text: 'SELECT n FROM drv_int WHERE k = $1',
                          values: [k], rowMode: 'array' })
    const one = async (q) => cell((await c.query(q)).rows[0][0])
    job.current = 'insert'
    job.step('insert', [await count(c, 'INSERT INTO drv_int (k, v, n) VALUES ($1, $2, 0)', [a, args.tag]),
                        await count(c, 'INSERT INTO drv_int (k, v, n) VALUES ($1, $2, 0)', [b, args.tag])])
    const loop = []
    job.current = 'upd_loop'
    for (let i = 0; i < 12; i++) loop.push(await one(upd(i % 2 ? b : a)))
    job.step('upd_loop', loop)
    const sels = []
    job.current = 'sel_loop'
    for (let i = 0; i < 12; i++) sels.push(await one(sel(i % 2 ? b : a)))
    job.step('sel_loop', sels)
    job.current = 'tx_upd'
    await c.query('BEGIN')
    const tx = []
    for (let i = 0; i < 5; i++) tx.push(await one(upd(a)))
    job.step('tx_upd', tx)
    job.current = 'tx_sel'
    job.step('tx_sel', await one(sel(a)))
    job.current = 'commit'
    await c.query('COMMIT')
    job.step('commit', 'ok')
    job.current = 'tx2_upd'
    await c.query('BEGIN')
    const tx2 = []
    for (let i = 0; i < 3; i++) tx2.push(await one(upd(b)))
    job.step('tx2_upd', tx2)
    job.current = 'rollback'
    await c.query('ROLLBACK')
    job.step('rollback', 'ok')
    job.current = 'sel_after_rollback'
    job.step('sel_after_rollback', await one(sel(b)))
  },

  async tx(c, job, args) {
    const [c0, c1, r0, r1] = args.keys
    for (const [j, k] of [c0, c1].entries()) {
      const p = `commit${j}`
      job.current = `${p}.insert`
      await c.query('BEGIN')
      job.step(job.current, await count(c, 'INSERT INTO drv_int (k, v, n) VALUES ($1, $2, 1)', [k, args.tag]))
      job.current = `${p}.update`
      job.step(job.current, await rows(c, 'UPDATE drv_int SET n = n + 1 WHERE k = $1 RETURNING n', [k]))
      job.current = `${p}.select`
      job.step(job.current, await rows(c, 'SELECT v, n FROM drv_int WHERE k = $1', [k]))
      job.current = `${p}.commit`
      await c.query('COMMIT')
      job.step(job.current, 'ok')
      job.current = `${p}.after`
      job.step(job.current, await rows(c, 'SELECT v, n FROM drv_int WHERE k = $1', [k]))
    }
    for (const [j, k] of [r0, r1].entries()) {
      const p = `rollback${j}`
      job.current = `${p}.insert`
      await c.query('BEGIN')
      job.step(job.current, await count(c, 'INSERT INTO drv_int (k, v, n) VALUES ($1, $2, 1)', [k, args.tag]))
      job.current = `${p}.select`
      job.step(job.current, await rows(c, 'SELECT v, n FROM drv_int WHERE k = $1', [k]))
      job.current = `${p}.rollback`
      await c.query('ROLLBACK')
      job.step(job.current, 'ok')
      job.current = `${p}.after`
      job.step(job.current, await rows(c, 'SELECT v, n FROM drv_int WHERE k = $1', [k]))
    }
  },

  async error(c, job, args) {
    const [a, b] = args.keys
    const ins = (k) => count(c, 'INSERT INTO drv_int (k, v, n) VALUES ($1, $2, 1)', [k, args.tag])
    const sel = (k) => rows(c, 'SELECT v, n FROM drv_int WHERE k = $1', [k])
    job.current = 'insert_a'
    job.step('insert_a', await ins(a))
    await expectError(job, 'duplicate_a', () => ins(a))
    job.current = 'select_a'
    job.step('select_a', await sel(a))
    job.current = 'insert_b'
    job.step('insert_b', await ins(b))
    job.current = 'tx.begin'
    await c.query('BEGIN')
    await expectError(job, 'tx.duplicate_b', () => ins(b))
    await expectError(job, 'tx.select_a', () => sel(a))
    job.current = 'tx.rollback'
    await c.query('ROLLBACK')
    job.step('tx.rollback', 'ok')
    job.current = 'select_b'
    job.step('select_b', await sel(b))
    job.current = 'update_a'
    job.step('update_a', await count(c, 'UPDATE drv_int SET n = n + 1 WHERE k = $1', [a]))
  },

  // SELECT shardgate.next_id(), answered by the proxy: 5 as simple queries, 5 through a named
  // statement (Parse once, then Bind/Execute); int8 comes back as a string.
  async next_id(c, job, args) {
    job.current = 'ids'
    const ids = []
    for (let i = 0; i < 5; i++) ids.push(BigInt((await c.query('SELECT shardgate.next_id()')).rows[0].next_id))
    for (let i = 0; i < 5; i++) {
      ids.push(BigInt((await c.query({ name: 'nid', text: 'SELECT shardgate.next_id() AS id' })).rows[0].id))
    }
    job.step('ids', ids.length)
    job.current = 'rising'
    job.step('rising', ids.every((v, i) => v > 0n && (i === 0 || v > ids[i - 1])) ? 'ok' : ids.map(String))
  },

  // Reads of the whole table: without parameters node-postgres sends a simple query, with
  // parameters Parse/Bind/Describe/Execute/Sync (an unnamed statement).
  async scatter(c, job, args) {
    const t = args.table
    job.current = 'insert'
    const counts = []
    for (const [id, v, n] of args.rows) {
      counts.push(await count(c, `INSERT INTO ${t} (id, v, n) VALUES ($1, $2, $3)`, [id, v, n]))
    }
    job.step('insert', counts)
    const reads = [
      ['count_simple', `SELECT count(*), sum(n) FROM ${t}`, undefined],
      ['top_simple', `SELECT id, v, n FROM ${t} ORDER BY id LIMIT 10`, undefined],
      ['count_param', `SELECT count(*) FROM ${t} WHERE n >= $1`, [0]],
      ['top_param', `SELECT id, v, n FROM ${t} WHERE n >= $1 ORDER BY id LIMIT $2`, [0, 10]],
      ['bottom_param', `SELECT id, v, n FROM ${t} WHERE n >= $1 ORDER BY id DESC LIMIT 3`, [0]],
    ]
    for (const [name, text, values] of reads) {
      job.current = name
      job.step(name, await rows(c, text, values))
    }
  },
}

async function runJob(spec) {
  const job = new Job(spec.label)
  let c = null
  try {
    c = await connect(spec.dsn, job)
    await scenarios[spec.scenario](c, job, spec.args || {})
    return { label: job.label, steps: job.steps, notes: job.notes, error: null }
  } catch (e) {
    return { label: job.label, steps: job.steps, notes: job.notes,
             error: { step: job.current, sqlstate: e.code || null, message: String(e.message || e) } }
  } finally {
    if (c) await c.end().catch(() => {})
  }
}

async function main() {
  let input = ''
  for await (const chunk of process.stdin) input += chunk
  const { jobs } = JSON.parse(input)
  const out = { driver: 'node-postgres', version: require('pg/package.json').version }
  process.stdout.write(JSON.stringify({ label: '_version', ...out }) + '\n')
  for (const spec of jobs) process.stdout.write(JSON.stringify(await runJob(spec)) + '\n')
}

main().catch((e) => { console.error(e); process.exit(1) })
