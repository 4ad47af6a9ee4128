// pgx v4 (Debian's golang-github-jackc-pgx-v4-dev, built offline in GOPATH mode) scenarios for
// tests/integration/test_drivers.py.
//
// Reads {"jobs": [{label, dsn, scenario, args}]} on stdin, runs each job on a new connection and
// prints one JSON line per job: {label, steps: [[name, value], ...], notes, error}. Values are
// canonical so that every driver reports the same: cells as strings (null stays null), command
// results as row counts, expected server errors as ["error", SQLSTATE]. An unexpected error ends
// the job: error = {step, sqlstate, message}. The steps are spelled out in test_drivers.py.
//
// pgx's default statement cache prepares every statement sent with the extended protocol under
// a name on its first use (Parse/Describe/Sync), then only binds and executes it; it asks for
// binary results and sends int8 and uuid parameters in binary.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgconn"
	"github.com/jackc/pgtype"
	"github.com/jackc/pgx/v4"
)

type jobSpec struct {
	Label    string          `json:"label"`
	DSN      string          `json:"dsn"`
	Scenario string          `json:"scenario"`
	Args     json.RawMessage `json:"args"`
}

type jobError struct {
	Step     string  `json:"step"`
	SQLState *string `json:"sqlstate"`
	Message  string  `json:"message"`
}

type job struct {
	Label   string                 `json:"label"`
	Steps   [][2]interface{}       `json:"steps"`
	Notes   map[string]interface{} `json:"notes"`
	Error   *jobError              `json:"error"`
	current string
}

func (j *job) step(name string, v interface{}) {
	j.current = name
	j.Steps = append(j.Steps, [2]interface{}{name, v})
}

// abort ends the job with an unexpected error (recovered in runJob).
type abort struct{ err error }

func (j *job) check(err error) {
	if err != nil {
		panic(abort{err})
	}
}

func sqlstate(err error) *string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return &pe.Code
	}
	return nil
}

// cell turns a decoded value into the canonical string.
func cell(v interface{}) interface{} {
	switch x := v.(type) {
	case nil:
		return nil
	case string:
		return x
	case int64:
		return strconv.FormatInt(x, 10)
	case int32:
		return strconv.FormatInt(int64(x), 10)
	case int16:
		return strconv.FormatInt(int64(x), 10)
	case [16]uint8:
		return fmt.Sprintf("%x-%x-%x-%x-%x", x[0:4], x[4:6], x[6:8], x[8:10], x[10:16])
	case pgtype.Numeric:
		return numericText(x)
	default:
		return fmt.Sprintf("%T:%v", v, v)
	}
}

// numericText prints a numeric as PostgreSQL does (pgtype's EncodeText gives "1e1" for 10).
func numericText(x pgtype.Numeric) string {
	if x.NaN {
		return "NaN"
	}
	digits, exp := x.Int.String(), int(x.Exp)
	sign := ""
	if strings.HasPrefix(digits, "-") {
		sign, digits = "-", digits[1:]
	}
	if exp >= 0 {
		if digits == "0" {
			return "0"
		}
		return sign + digits + strings.Repeat("0", exp)
	}
	for len(digits) <= -exp {
		digits = "0" + digits
	}
	return sign + digits[:len(digits)+exp] + "." + digits[len(digits)+exp:]
}

type querier interface {
	Query(ctx context.Context, sql string, args ...interface{}) (pgx.Rows, error)
	Exec(ctx context.Context, sql string, args ...interface{}) (pgconn.CommandTag, error)
}

var ctx = context.Background()

// pgxVersion is set at build time (-ldflags "-X main.pgxVersion=...": the Debian package's).
var pgxVersion = "unknown"

func collect(r pgx.Rows, err error) ([][]interface{}, error) {
	if err != nil {
		return nil, err
	}
	defer r.Close()
	out := [][]interface{}{}
	for r.Next() {
		vals, err := r.Values()
		if err != nil {
			return nil, err
		}
		row := make([]interface{}, len(vals))
		for i, v := range vals {
			row[i] = cell(v)
		}
		out = append(out, row)
	}
	return out, r.Err()
}

func rows(q querier, sql string, args ...interface{}) ([][]interface{}, error) {
	r, err := q.Query(ctx, sql, args...)
	return collect(r, err)
}

func count(q querier, sql string, args ...interface{}) (int64, error) {
	ct, err := q.Exec(ctx, sql, args...)
	return ct.RowsAffected(), err
}

// must* record an unexpected error as the job's end; want* record an expected server error.
func (j *job) mustRows(q querier, sql string, args ...interface{}) [][]interface{} {
	r, err := rows(q, sql, args...)
	j.check(err)
	return r
}

func (j *job) mustCount(q querier, sql string, args ...interface{}) int64 {
	n, err := count(q, sql, args...)
	j.check(err)
	return n
}

func (j *job) orError(v interface{}, err error) interface{} {
	if err == nil {
		return v
	}
	if s := sqlstate(err); s != nil {
		return []interface{}{"error", *s}
	}
	panic(abort{err})
}

func (j *job) one(q querier, sql string, args ...interface{}) interface{} {
	r := j.mustRows(q, sql, args...)
	if len(r) != 1 || len(r[0]) != 1 {
		j.check(fmt.Errorf("%q returned %v, want one value", sql, r))
	}
	return r[0][0]
}

// ---------------------------------------------------------------------------------- login

// authSniffer reads the server's messages up to the first ReadyForQuery and records the
// authentication requests: 10 = AuthenticationSASL (with its mechanisms), 12 = SASLFinal.
type authSniffer struct {
	net.Conn
	mu    sync.Mutex
	buf   []byte
	start bool
	done  bool
	auth  *authSeen
}

type authSeen struct {
	Mechanisms []string `json:"mechanisms"`
	Codes      []int    `json:"codes"`
}

func (s *authSniffer) Read(p []byte) (int, error) {
	n, err := s.Conn.Read(p)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done || n == 0 {
		return n, err
	}
	s.buf = append(s.buf, p[:n]...)
	if !s.start && len(s.buf) > 0 {
		s.start = true
		if s.buf[0] == 'N' || s.buf[0] == 'S' { // the answer to an SSLRequest (sslmode=prefer)
			s.buf = s.buf[1:]
		}
	}
	for len(s.buf) >= 5 && !s.done {
		l := int(uint32(s.buf[1])<<24 | uint32(s.buf[2])<<16 | uint32(s.buf[3])<<8 | uint32(s.buf[4]))
		if len(s.buf) < 1+l {
			break
		}
		body := s.buf[5 : 1+l]
		switch s.buf[0] {
		case 'R':
			code := int(uint32(body[0])<<24 | uint32(body[1])<<16 | uint32(body[2])<<8 | uint32(body[3]))
			s.auth.Codes = append(s.auth.Codes, code)
			if code == 10 {
				rest := body[4:]
				for len(rest) > 1 {
					i := 0
					for i < len(rest) && rest[i] != 0 {
						i++
					}
					s.auth.Mechanisms = append(s.auth.Mechanisms, string(rest[:i]))
					rest = rest[min(i+1, len(rest)):]
				}
			}
		case 'Z':
			s.done = true
		}
		s.buf = s.buf[1+l:]
	}
	return n, err
}

func min(a, b int) int {
	if a < b {
		return a
	}
	return b
}

func connect(dsn string, seen *authSeen) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	cfg.ConnectTimeout = 10 * time.Second
	if seen != nil {
		dial := cfg.DialFunc
		cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dial(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			*seen = authSeen{}
			return &authSniffer{Conn: c, auth: seen}, nil
		}
	}
	return pgx.ConnectConfig(ctx, cfg)
}

// ------------------------------------------------------------------------------ scenarios

type args struct {
	Tag    string `json:"tag"`
	Keys   []json.RawMessage
	BadDSN string `json:"bad_dsn"`
	Tables []struct {
		Table string   `json:"table"`
		Kind  string   `json:"kind"`
		Keys  []string `json:"keys"`
	} `json:"tables"`
	Table string           `json:"table"`
	Rows  [][3]interface{} `json:"rows"` // [id as text, v, n]
}

// key returns an int key as int64 (sent as binary int8), anything else as its text.
func key(kind, k string) interface{} {
	if kind == "int" {
		n, err := strconv.ParseInt(k, 10, 64)
		if err != nil {
			panic(abort{err})
		}
		return n
	}
	return k
}

func intKeys(a *args) []int64 {
	out := make([]int64, len(a.Keys))
	for i, raw := range a.Keys {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			panic(abort{err})
		}
		out[i] = key("int", s).(int64)
	}
	return out
}

const (
	ins = "INSERT INTO drv_int (k, v, n) VALUES ($1, $2, $3)"
	sel = "SELECT v, n FROM drv_int WHERE k = $1"
)

var scenarios = map[string]func(c *pgx.Conn, j *job, a *args){
	"login": func(c *pgx.Conn, j *job, a *args) {
		j.step("select_1", j.mustRows(c, "SELECT 1"))
		j.current = "wrong_password"
		bad, err := connect(a.BadDSN, nil)
		if err == nil {
			bad.Close(ctx)
			j.step("wrong_password", "connected")
		} else {
			j.step("wrong_password", j.orError(nil, err))
		}
	},

	"crud": func(c *pgx.Conn, j *job, a *args) {
		for _, t := range a.Tables {
			for i, k := range t.Keys {
				j.current = fmt.Sprintf("%s.insert.%d", t.Table, i)
				j.step(j.current, j.mustRows(c, fmt.Sprintf("INSERT INTO %s (k, v, n) VALUES ($1, $2, $3) RETURNING k, v, n", t.Table),
					key(t.Kind, k), fmt.Sprintf("%s-%d-ü€", a.Tag, i), int64(7*i+1)))
			}
			for i, k := range t.Keys {
				j.current = fmt.Sprintf("%s.select.%d", t.Table, i)
				j.step(j.current, j.mustRows(c, fmt.Sprintf("SELECT k, v, n FROM %s WHERE k = $1", t.Table), key(t.Kind, k)))
			}
			for i, k := range t.Keys {
				j.current = fmt.Sprintf("%s.update.%d", t.Table, i)
				j.step(j.current, j.mustCount(c, fmt.Sprintf("UPDATE %s SET v = v || '!', n = n + 10 WHERE k = $1", t.Table), key(t.Kind, k)))
			}
			for i := 0; i < 2; i++ {
				j.current = fmt.Sprintf("%s.delete.%d", t.Table, i)
				j.step(j.current, j.mustCount(c, fmt.Sprintf("DELETE FROM %s WHERE k = $1", t.Table), key(t.Kind, t.Keys[i])))
			}
			for i, k := range t.Keys {
				j.current = fmt.Sprintf("%s.after.%d", t.Table, i)
				j.step(j.current, j.mustRows(c, fmt.Sprintf("SELECT k, v, n FROM %s WHERE k = $1", t.Table), key(t.Kind, k)))
			}
		}
	},

	// The same SQL text again and again: pgx's statement cache prepared it at its first use.
	"prepared": func(c *pgx.Conn, j *job, a *args) {
		k := intKeys(a)
		upd := "UPDATE drv_int SET n = n + 1 WHERE k = $1 RETURNING n"
		sel1 := "SELECT n FROM drv_int WHERE k = $1"
		j.current = "insert"
		j.step("insert", []int64{j.mustCount(c, ins, k[0], a.Tag, int64(0)), j.mustCount(c, ins, k[1], a.Tag, int64(0))})
		j.current = "upd_loop"
		var loop []interface{}
		for i := 0; i < 12; i++ {
			loop = append(loop, j.one(c, upd, k[i%2]))
		}
		j.step("upd_loop", loop)
		j.current = "sel_loop"
		var sels []interface{}
		for i := 0; i < 12; i++ {
			sels = append(sels, j.one(c, sel1, k[i%2]))
		}
		j.step("sel_loop", sels)
		j.Notes["statement_cache_len"] = c.StatementCache().Len()
		j.current = "tx_upd"
		tx, err := c.Begin(ctx)
		j.check(err)
		var txs []interface{}
		for i := 0; i < 5; i++ {
			txs = append(txs, j.one(tx, upd, k[0]))
		}
		j.step("tx_upd", txs)
		j.step("tx_sel", j.one(tx, sel1, k[0]))
		j.current = "commit"
		j.check(tx.Commit(ctx))
		j.step("commit", "ok")
		j.current = "tx2_upd"
		tx, err = c.Begin(ctx)
		j.check(err)
		var tx2 []interface{}
		for i := 0; i < 3; i++ {
			tx2 = append(tx2, j.one(tx, upd, k[1]))
		}
		j.step("tx2_upd", tx2)
		j.current = "rollback"
		j.check(tx.Rollback(ctx))
		j.step("rollback", "ok")
		j.step("sel_after_rollback", j.one(c, sel1, k[1]))
	},

	"tx": func(c *pgx.Conn, j *job, a *args) {
		k := intKeys(a)
		for n, key := range k[:2] {
			p := fmt.Sprintf("commit%d", n)
			j.current = p + ".insert"
			tx, err := c.Begin(ctx)
			j.check(err)
			j.step(p+".insert", j.mustCount(tx, ins, key, a.Tag, int64(1)))
			j.step(p+".update", j.mustRows(tx, "UPDATE drv_int SET n = n + 1 WHERE k = $1 RETURNING n", key))
			j.step(p+".select", j.mustRows(tx, sel, key))
			j.current = p + ".commit"
			j.check(tx.Commit(ctx))
			j.step(p+".commit", "ok")
			j.step(p+".after", j.mustRows(c, sel, key))
		}
		for n, key := range k[2:] {
			p := fmt.Sprintf("rollback%d", n)
			j.current = p + ".insert"
			tx, err := c.Begin(ctx)
			j.check(err)
			j.step(p+".insert", j.mustCount(tx, ins, key, a.Tag, int64(1)))
			j.step(p+".select", j.mustRows(tx, sel, key))
			j.current = p + ".rollback"
			j.check(tx.Rollback(ctx))
			j.step(p+".rollback", "ok")
			j.step(p+".after", j.mustRows(c, sel, key))
		}
	},

	"error": func(c *pgx.Conn, j *job, a *args) {
		k := intKeys(a)
		j.current = "insert_a"
		j.step("insert_a", j.mustCount(c, ins, k[0], a.Tag, int64(1)))
		j.current = "duplicate_a"
		j.step("duplicate_a", j.orError(count(c, ins, k[0], a.Tag, int64(1))))
		j.step("select_a", j.mustRows(c, sel, k[0]))
		j.step("insert_b", j.mustCount(c, ins, k[1], a.Tag, int64(1)))
		j.current = "tx.begin"
		tx, err := c.Begin(ctx)
		j.check(err)
		j.current = "tx.duplicate_b"
		j.step("tx.duplicate_b", j.orError(count(tx, ins, k[1], a.Tag, int64(1))))
		j.current = "tx.select_a"
		j.step("tx.select_a", j.orError(rows(tx, sel, k[0])))
		j.current = "tx.rollback"
		j.check(tx.Rollback(ctx))
		j.step("tx.rollback", "ok")
		j.step("select_b", j.mustRows(c, sel, k[1]))
		j.step("update_a", j.mustCount(c, "UPDATE drv_int SET n = n + 1 WHERE k = $1", k[0]))
	},

	// pgx.Batch: every queued statement, then one Sync.
	"batch": func(c *pgx.Conn, j *job, a *args) {
		k := intKeys(a)
		j.current = "batch1"
		b := &pgx.Batch{}
		for i := 0; i < 4; i++ {
			b.Queue(ins, k[i], a.Tag, int64(i+1))
		}
		b.Queue("SELECT count(*), sum(n) FROM drv_int WHERE k IN ($1, $2, $3, $4)", k[0], k[1], k[2], k[3])
		j.step("batch1", runBatch(c.SendBatch(ctx, b), []bool{false, false, false, false, true}))
		j.current = "batch2"
		b = &pgx.Batch{}
		b.Queue("UPDATE drv_int SET n = n + 100 WHERE k = $1 RETURNING n", k[0])
		b.Queue(sel, k[1])
		b.Queue("DELETE FROM drv_int WHERE k = $1", k[3])
		j.step("batch2", runBatch(c.SendBatch(ctx, b), []bool{true, true, false}))
		// A batch inside a transaction (pgx sends BEGIN on its own, then the batch).
		j.current = "batch3"
		tx, err := c.Begin(ctx)
		j.check(err)
		b = &pgx.Batch{}
		b.Queue(ins, k[4], a.Tag, int64(5))
		b.Queue("SELECT count(*) FROM drv_int WHERE k IN ($1, $2, $3, $4, $5)", k[0], k[1], k[2], k[3], k[4])
		j.step("batch3", runBatch(tx.SendBatch(ctx, b), []bool{false, true}))
		j.current = "batch3.commit"
		j.check(tx.Commit(ctx))
		j.step("batch3.commit", "ok")
	},

	// Known gap (issue 18): statements on two shards before one Sync.
	"batch_cross": func(c *pgx.Conn, j *job, a *args) {
		k := intKeys(a)
		j.current = "cross"
		b := &pgx.Batch{}
		b.Queue(ins, k[0], a.Tag, int64(1))
		b.Queue(ins, k[1], a.Tag, int64(1))
		j.step("cross", runBatch(c.SendBatch(ctx, b), []bool{false, false}))
		j.step("after_a", j.mustRows(c, sel, k[0]))
		j.step("after_b", j.mustRows(c, sel, k[1]))
	},

	// SELECT shardgate.next_id(), answered by the proxy: 5 as simple queries, 5 through pgx's
	// cached named statement (binary int8).
	"next_id": func(c *pgx.Conn, j *job, a *args) {
		j.current = "ids"
		var ids []int64
		for i := 0; i < 10; i++ {
			var id int64
			var err error
			if i < 5 {
				err = c.QueryRow(ctx, "SELECT shardgate.next_id()", pgx.QuerySimpleProtocol(true)).Scan(&id)
			} else {
				err = c.QueryRow(ctx, "SELECT shardgate.next_id() AS id").Scan(&id)
			}
			j.check(err)
			ids = append(ids, id)
		}
		j.step("ids", len(ids))
		j.current = "rising"
		rising := true
		for i, v := range ids {
			rising = rising && v > 0 && (i == 0 || v > ids[i-1])
		}
		if rising {
			j.step("rising", "ok")
		} else {
			j.step("rising", ids)
		}
	},

	// Reads of the whole table: QuerySimpleProtocol(true) sends a simple query; without it, a
	// cached named statement with binary results.
	"scatter": func(c *pgx.Conn, j *job, a *args) {
		t := a.Table
		j.current = "insert"
		var counts []int64
		for _, r := range a.Rows {
			counts = append(counts, j.mustCount(c, fmt.Sprintf("INSERT INTO %s (id, v, n) VALUES ($1, $2, $3)", t),
				key("int", r[0].(string)), r[1], int64(r[2].(float64))))
		}
		j.step("insert", counts)
		simple := pgx.QuerySimpleProtocol(true)
		j.current = "count_simple"
		j.step("count_simple", j.mustRows(c, fmt.Sprintf("SELECT count(*), sum(n) FROM %s", t), simple))
		j.current = "top_simple"
		j.step("top_simple", j.mustRows(c, fmt.Sprintf("SELECT id, v, n FROM %s ORDER BY id LIMIT 10", t), simple))
		j.current = "count_param"
		j.step("count_param", j.mustRows(c, fmt.Sprintf("SELECT count(*) FROM %s WHERE n >= $1", t), int64(0)))
		j.current = "top_param"
		j.step("top_param", j.mustRows(c, fmt.Sprintf("SELECT id, v, n FROM %s WHERE n >= $1 ORDER BY id LIMIT $2", t), int64(0), int64(10)))
		j.current = "bottom_param"
		j.step("bottom_param", j.mustRows(c, fmt.Sprintf("SELECT id, v, n FROM %s WHERE n >= $1 ORDER BY id DESC LIMIT 3", t), int64(0)))
	},
}

// runBatch reads a batch's results in order: rows for queries, a row count for commands, and
// ["error", SQLSTATE, message] for a statement that failed or was skipped after a failure before
// the batch's Sync.
func runBatch(br pgx.BatchResults, query []bool) []interface{} {
	out := make([]interface{}, 0, len(query))
	for _, q := range query {
		var v interface{}
		var err error
		if q {
			v, err = collect(br.Query())
		} else {
			var ct pgconn.CommandTag
			ct, err = br.Exec()
			v = ct.RowsAffected()
		}
		if err != nil {
			var pe *pgconn.PgError
			if errors.As(err, &pe) {
				v = []interface{}{"error", pe.Code, pe.Message}
			} else {
				v = []interface{}{"error", nil, err.Error()}
			}
		}
		out = append(out, v)
	}
	if err := br.Close(); err != nil {
		if _, ok := err.(*pgconn.PgError); !ok {
			out = append(out, []interface{}{"close_error", err.Error()})
		}
	}
	return out
}

func runJob(spec jobSpec) (j *job) {
	j = &job{Label: spec.Label, Steps: [][2]interface{}{}, Notes: map[string]interface{}{}, current: "connect"}
	var c *pgx.Conn
	defer func() {
		if r := recover(); r != nil {
			ab, ok := r.(abort)
			if !ok {
				ab = abort{fmt.Errorf("panic: %v", r)}
			}
			j.Error = &jobError{Step: j.current, SQLState: sqlstate(ab.err), Message: ab.err.Error()}
		}
		if c != nil {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			c.Close(cctx)
			cancel()
		}
	}()
	var a args
	if len(spec.Args) > 0 {
		j.check(json.Unmarshal(spec.Args, &a))
	}
	seen := &authSeen{}
	var err error
	c, err = connect(spec.DSN, seen)
	j.check(err)
	j.Notes["auth"] = seen
	fn, ok := scenarios[spec.Scenario]
	if !ok {
		j.check(fmt.Errorf("unknown scenario %q", spec.Scenario))
	}
	fn(c, j, &a)
	return j
}

func main() {
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		panic(err)
	}
	var input struct {
		Jobs []jobSpec `json:"jobs"`
	}
	if err := json.Unmarshal(data, &input); err != nil {
		panic(err)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetEscapeHTML(false)
	enc.Encode(map[string]interface{}{"label": "_version", "driver": "pgx", "version": pgxVersion})
	for _, spec := range input.Jobs {
		enc.Encode(runJob(spec))
	}
}
