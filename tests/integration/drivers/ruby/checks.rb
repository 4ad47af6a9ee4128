# ruby-pg (Debian's ruby-pg, on libpq 15) scenarios for tests/integration/test_drivers.py.
#
# Reads {"jobs": [{label, dsn, scenario, args}]} on stdin, runs each job on a new connection and
# prints one JSON line per job: {label, steps: [[name, value], ...], notes, error}. Values are
# canonical so that every driver reports the same: cells as strings (null stays null), command
# results as row counts, expected server errors as ["error", SQLSTATE]. An unexpected error ends
# the job: error = {step, sqlstate, message}. The steps are spelled out in test_drivers.py.
#
# Batches use libpq's pipeline mode (PG::Connection#enter_pipeline_mode, libpq >= 14).

require "json"
require "pg"

# Raised inside conn.transaction to make ruby-pg roll it back.
class Rollback < StandardError; end

class Job
  attr_reader :steps, :notes
  attr_accessor :current

  def initialize
    @steps = []
    @notes = {}
    @current = "connect"
  end

  def step(name, value)
    @current = name
    @steps << [name, value]
  end
end

def sqlstate(e)
  e.respond_to?(:result) && e.result ? e.result.error_field(PG::PG_DIAG_SQLSTATE) : nil
end

def rows(conn, sql, params = nil)
  r = params.nil? ? conn.exec(sql) : conn.exec_params(sql, params)
  r.values
end

def count(conn, sql, params)
  conn.exec_params(sql, params).cmd_tuples
end

# The block's value, or ["error", SQLSTATE] when the server reports an error.
def expect_error(job, name)
  job.current = name
  job.step(name, yield)
rescue PG::Error => e
  raise if sqlstate(e).nil?
  job.step(name, ["error", sqlstate(e)])
end

# Sends statements [sql, params] in pipeline mode followed by one Sync, and returns per statement
# its row count (commands), its rows (queries), ["error", SQLSTATE, message] or ["aborted"] (a
# statement PostgreSQL skipped after an earlier error before the Sync).
def pipeline(conn, statements)
  conn.enter_pipeline_mode
  begin
    statements.each { |sql, params| conn.send_query_params(sql, params) }
    conn.pipeline_sync
    out = statements.map do
      r = conn.get_result
      res = case r.result_status
            when PG::PGRES_TUPLES_OK then r.values
            when PG::PGRES_COMMAND_OK then r.cmd_tuples
            when PG::PGRES_FATAL_ERROR
              ["error", r.error_field(PG::PG_DIAG_SQLSTATE),
               r.error_field(PG::PG_DIAG_MESSAGE_PRIMARY)]
            when PG::PGRES_PIPELINE_ABORTED then ["aborted"]
            else ["status", r.res_status(r.result_status)]
            end
      r.clear
      extra = conn.get_result # nil ends each statement's results
      raise "more than one result for a pipelined statement" unless extra.nil?
      res
    end
    sync = conn.get_result
    raise "expected PIPELINE_SYNC, got #{sync&.res_status(sync.result_status)}" \
      unless sync&.result_status == PG::PGRES_PIPELINE_SYNC
    out
  ensure
    conn.exit_pipeline_mode if conn.pipeline_status != PG::PQ_PIPELINE_OFF
  end
end

CRUD_INSERT = "INSERT INTO %s (k, v, n) VALUES ($1, $2, $3) RETURNING k, v, n"
CRUD_SELECT = "SELECT k, v, n FROM %s WHERE k = $1"
CRUD_UPDATE = "UPDATE %s SET v = v || '!', n = n + 10 WHERE k = $1"
CRUD_DELETE = "DELETE FROM %s WHERE k = $1"
INS = "INSERT INTO drv_int (k, v, n) VALUES ($1, $2, $3)"
SEL = "SELECT v, n FROM drv_int WHERE k = $1"

SCENARIOS = {
  "login" => lambda do |c, job, args|
    job.step("select_1", rows(c, "SELECT 1"))
    job.notes["connection_used_password"] = c.connection_used_password
    begin
      PG.connect(args["bad_dsn"]).close
      job.step("wrong_password", "connected")
    rescue PG::Error => e
      # libpq reports a failed login without a PGresult; the message carries the server's text.
      job.step("wrong_password", ["error", e.message[/password authentication failed/] ? "28P01" : e.message])
    end
  end,

  "crud" => lambda do |c, job, args|
    args["tables"].each do |t|
      table, keys = t["table"], t["keys"]
      keys.each_with_index do |k, i|
        job.current = "#{table}.insert.#{i}"
        job.step(job.current, rows(c, format(CRUD_INSERT, table), [k, "#{args["tag"]}-#{i}-ü€", 7 * i + 1]))
      end
      keys.each_with_index do |k, i|
        job.current = "#{table}.select.#{i}"
        job.step(job.current, rows(c, format(CRUD_SELECT, table), [k]))
      end
      keys.each_with_index do |k, i|
        job.current = "#{table}.update.#{i}"
        job.step(job.current, count(c, format(CRUD_UPDATE, table), [k]))
      end
      [0, 1].each do |i|
        job.current = "#{table}.delete.#{i}"
        job.step(job.current, count(c, format(CRUD_DELETE, table), [keys[i]]))
      end
      keys.each_with_index do |k, i|
        job.current = "#{table}.after.#{i}"
        job.step(job.current, rows(c, format(CRUD_SELECT, table), [k]))
      end
    end
  end,

  # conn.prepare sends Parse of a named statement (and Sync); exec_prepared only Bind/Execute.
  "prepared" => lambda do |c, job, args|
    a, b = args["keys"]
    job.current = "prepare"
    c.prepare("drv_upd", "UPDATE drv_int SET n = n + 1 WHERE k = $1 RETURNING n")
    c.prepare("drv_sel", "SELECT n FROM drv_int WHERE k = $1")
    job.notes["describe_upd_nparams"] = c.describe_prepared("drv_upd").nparams
    job.notes["describe_sel_nfields"] = c.describe_prepared("drv_sel").nfields
    one = ->(name, k) { c.exec_prepared(name, [k]).getvalue(0, 0) }
    job.current = "insert"
    job.step("insert", [count(c, INS, [a, args["tag"], 0]), count(c, INS, [b, args["tag"], 0])])
    job.current = "upd_loop"
    job.step("upd_loop", (0...12).map { |i| one.call("drv_upd", i.odd? ? b : a) })
    job.current = "sel_loop"
    job.step("sel_loop", (0...12).map { |i| one.call("drv_sel", i.odd? ? b : a) })
    job.current = "tx_upd"
    c.transaction do
      job.step("tx_upd", (0...5).map { one.call("drv_upd", a) })
      job.step("tx_sel", one.call("drv_sel", a))
    end
    job.step("commit", "ok")
    job.current = "tx2_upd"
    begin
      c.transaction do
        job.step("tx2_upd", (0...3).map { one.call("drv_upd", b) })
        raise Rollback
      end
    rescue Rollback
      job.step("rollback", "ok")
    end
    job.current = "sel_after_rollback"
    job.step("sel_after_rollback", one.call("drv_sel", b))
  end,

  "tx" => lambda do |c, job, args|
    c0, c1, r0, r1 = args["keys"]
    [c0, c1].each_with_index do |k, j|
      p = "commit#{j}"
      job.current = "#{p}.insert"
      c.transaction do
        job.step("#{p}.insert", count(c, INS, [k, args["tag"], 1]))
        job.step("#{p}.update", rows(c, "UPDATE drv_int SET n = n + 1 WHERE k = $1 RETURNING n", [k]))
        job.step("#{p}.select", rows(c, SEL, [k]))
        job.current = "#{p}.commit"
      end
      job.step("#{p}.commit", "ok")
      job.step("#{p}.after", rows(c, SEL, [k]))
    end
    [r0, r1].each_with_index do |k, j|
      p = "rollback#{j}"
      job.current = "#{p}.insert"
      begin
        c.transaction do
          job.step("#{p}.insert", count(c, INS, [k, args["tag"], 1]))
          job.step("#{p}.select", rows(c, SEL, [k]))
          job.current = "#{p}.rollback"
          raise Rollback
        end
      rescue Rollback
        job.step("#{p}.rollback", "ok")
      end
      job.step("#{p}.after", rows(c, SEL, [k]))
    end
  end,

  "error" => lambda do |c, job, args|
    a, b = args["keys"]
    job.current = "insert_a"
    job.step("insert_a", count(c, INS, [a, args["tag"], 1]))
    expect_error(job, "duplicate_a") { count(c, INS, [a, args["tag"], 1]) }
    job.step("select_a", rows(c, SEL, [a]))
    job.step("insert_b", count(c, INS, [b, args["tag"], 1]))
    job.current = "tx.begin"
    c.exec("BEGIN")
    expect_error(job, "tx.duplicate_b") { count(c, INS, [b, args["tag"], 1]) }
    expect_error(job, "tx.select_a") { rows(c, SEL, [a]) }
    job.current = "tx.rollback"
    c.exec("ROLLBACK")
    job.step("tx.rollback", "ok")
    job.step("select_b", rows(c, SEL, [b]))
    job.step("update_a", count(c, "UPDATE drv_int SET n = n + 1 WHERE k = $1", [a]))
  end,

  "batch" => lambda do |c, job, args|
    k = args["keys"]
    tag = args["tag"]
    job.current = "batch1"
    job.step("batch1", pipeline(c, (0...4).map { |i| [INS, [k[i], tag, i + 1]] } +
                                   [["SELECT count(*), sum(n) FROM drv_int WHERE k IN ($1, $2, $3, $4)", k[0, 4]]]))
    job.current = "batch2"
    job.step("batch2", pipeline(c, [["UPDATE drv_int SET n = n + 100 WHERE k = $1 RETURNING n", [k[0]]],
                                    [SEL, [k[1]]],
                                    ["DELETE FROM drv_int WHERE k = $1", [k[3]]]]))
    # A transaction inside one pipeline: BEGIN ... COMMIT before the Sync.
    job.current = "batch3"
    r = pipeline(c, [["BEGIN", []], [INS, [k[4], tag, 5]],
                     ["SELECT count(*) FROM drv_int WHERE k IN ($1, $2, $3, $4, $5)", k],
                     ["COMMIT", []]])
    job.step("batch3", r[1, 2])
    job.step("batch3.commit", r[0] == 0 && r[3] == 0 ? "ok" : [r[0], r[3]])
  end,

  # Known gap (issue 18): statements on two shards before one Sync.
  "batch_cross" => lambda do |c, job, args|
    a, b = args["keys"]
    job.current = "cross"
    job.step("cross", pipeline(c, [[INS, [a, args["tag"], 1]], [INS, [b, args["tag"], 1]]]))
    job.step("after_a", rows(c, SEL, [a]))
    job.step("after_b", rows(c, SEL, [b]))
  end,

  # SELECT shardgate.next_id(), answered by the proxy: 5 by exec (simple), 5 by exec_params
  # (an unnamed extended-protocol statement).
  "next_id" => lambda do |c, job, args|
    job.current = "ids"
    ids = (0...5).map { c.exec("SELECT shardgate.next_id()")[0]["next_id"].to_i } +
          (0...5).map { c.exec_params("SELECT shardgate.next_id() AS id", [])[0]["id"].to_i }
    job.step("ids", ids.length)
    job.current = "rising"
    rising = ids.each_with_index.all? { |v, i| v > 0 && (i.zero? || v > ids[i - 1]) }
    job.step("rising", rising ? "ok" : ids)
  end,

  # exec sends a simple query, exec_params an unnamed extended-protocol statement.
  "scatter" => lambda do |c, job, args|
    t = args["table"]
    job.current = "insert"
    job.step("insert", args["rows"].map { |r| count(c, "INSERT INTO #{t} (id, v, n) VALUES ($1, $2, $3)", r) })
    job.current = "count_simple"
    job.step("count_simple", rows(c, "SELECT count(*), sum(n) FROM #{t}"))
    job.current = "top_simple"
    job.step("top_simple", rows(c, "SELECT id, v, n FROM #{t} ORDER BY id LIMIT 10"))
    job.current = "count_param"
    job.step("count_param", rows(c, "SELECT count(*) FROM #{t} WHERE n >= $1", [0]))
    job.current = "top_param"
    job.step("top_param", rows(c, "SELECT id, v, n FROM #{t} WHERE n >= $1 ORDER BY id LIMIT $2", [0, 10]))
    job.current = "bottom_param"
    job.step("bottom_param", rows(c, "SELECT id, v, n FROM #{t} WHERE n >= $1 ORDER BY id DESC LIMIT 3", [0]))
  end,
}.freeze

def run_job(spec)
  job = Job.new
  conn = nil
  begin
    conn = PG.connect(spec["dsn"])
    SCENARIOS.fetch(spec["scenario"]).call(conn, job, spec["args"] || {})
    { label: spec["label"], steps: job.steps, notes: job.notes, error: nil }
  rescue StandardError => e
    { label: spec["label"], steps: job.steps, notes: job.notes,
      error: { step: job.current, sqlstate: sqlstate(e), message: "#{e.class}: #{e.message}" } }
  ensure
    conn&.close
  end
end

input = JSON.parse($stdin.read)
$stdout.sync = true
puts JSON.generate(label: "_version", driver: "ruby-pg", version: PG::VERSION,
                   libpq: PG.library_version)
input["jobs"].each { |spec| puts JSON.generate(run_job(spec)) }
