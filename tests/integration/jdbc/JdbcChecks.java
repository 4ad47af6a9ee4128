// JDBC (pgjdbc) scenarios for tests/integration/test_jdbc.py. No build tool: the test compiles
// this file with `javac -cp /usr/share/java/postgresql.jar` and runs it with `java -cp`.
//
// Usage: java -cp <classes>:/usr/share/java/postgresql.jar JdbcChecks JOB...
//   JOB = LABEL|JDBC_URL|SCENARIO|KEY[,KEY...]
//
// Each job opens its own connection to JDBC_URL, runs SCENARIO on the given accounts keys and
// prints one JSON line on stdout:
//   {"label": LABEL, "scenario": SCENARIO, "steps": [[STEP, VALUE], ...], "error": null}
// VALUE is an update count, a list of rows (each a list of column values), a SQLSTATE that the
// scenario expects to see, or "ok". A failure that the scenario does not expect ends the job and
// is reported in "error" as {"step", "sqlstate", "message"}; the next job still runs. Values
// never include the keys, so the same scenario gives the same steps on any key and any target
// (the proxy, or a shard's primary directly), and the test compares them.
//
// The exit status is 0 when every job ran (whatever it printed), 2 on bad arguments.

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

public final class JdbcChecks {
    private static final String INSERT =
        "INSERT INTO accounts (id, owner, balance) VALUES (?, ?, ?)";
    private static final String SELECT = "SELECT owner, balance FROM accounts WHERE id = ?";

    /** The steps of one job so far, and the step that is running (named in an error). */
    private static final class Job {
        final List<Object[]> steps = new ArrayList<>();
        String current = "connect";

        void step(String name) {
            current = name;
        }

        void record(Object value) {
            steps.add(new Object[] {current, value});
        }
    }

    /** Thrown by expectError when the statement that should fail did not. */
    private static final class UnexpectedSuccess extends RuntimeException {
        private static final long serialVersionUID = 1L;

        UnexpectedSuccess(String what) {
            super(what);
        }
    }

    public static void main(String[] args) throws Exception {
        if (args.length == 0) {
            System.err.println("usage: JdbcChecks LABEL|JDBC_URL|SCENARIO|KEY[,KEY...] ...");
            System.exit(2);
        }
        Class.forName("org.postgresql.Driver");
        for (String arg : args) {
            String[] f = arg.split("\\|", -1);
            if (f.length != 4) {
                System.err.println("bad job (want LABEL|URL|SCENARIO|KEYS): " + arg);
                System.exit(2);
            }
            String label = f[0], url = f[1], scenario = f[2];
            long[] keys = Arrays.stream(f[3].split(",")).mapToLong(Long::parseLong).toArray();
            Job job = new Job();
            Object error = null;
            try (Connection c = DriverManager.getConnection(url)) {
                run(scenario, c, keys, job);
            } catch (SQLException e) {
                error = errorJson(job.current, e.getSQLState(), e.getMessage());
            } catch (RuntimeException e) {
                error = errorJson(job.current, null, e.toString());
            }
            StringBuilder out = new StringBuilder("{\"label\": ").append(json(label))
                .append(", \"scenario\": ").append(json(scenario)).append(", \"steps\": [");
            for (int i = 0; i < job.steps.size(); i++) {
                Object[] s = job.steps.get(i);
                out.append(i == 0 ? "" : ", ").append('[').append(json(s[0])).append(", ")
                    .append(json(s[1])).append(']');
            }
            out.append("], \"error\": ").append(error == null ? "null" : error).append('}');
            System.out.println(out);
            System.out.flush();
        }
    }

    private static void run(String scenario, Connection c, long[] k, Job job) throws SQLException {
        switch (scenario) {
            case "tx_commit": txCommit(c, k[0], job); break;
            case "tx_rollback": txRollback(c, k[0], job); break;
            case "tx_repeat": txRepeat(c, k[0], job); break;
            case "batch_autocommit": batch(c, k, false, job); break;
            case "batch_tx": batch(c, k, true, job); break;
            case "error_recovery": errorRecovery(c, k[0], k[1], job); break;
            case "set_local_first": setLocalFirst(c, k[0], job); break;
            case "transfer": transfer(c, k[0], k[1], job); break;
            case "next_id": nextId(c, k[0], job); break;
            case "text_keys": otherKeys(c, k, false, job); break;
            case "uuid_keys": otherKeys(c, k, true, job); break;
            default: throw new IllegalArgumentException("unknown scenario " + scenario);
        }
    }

    // INSERT, UPDATE and SELECT of one key with PreparedStatements in a transaction, committed.
    // SELECT shardgate.next_id() (the proxy answers it, so this runs through the proxy only): a
    // PreparedStatement run 8 times in autocommit (past the prepare threshold), then 3 times in
    // a transaction that goes on to insert key k and commits. IDs differ per run, so the steps
    // record how many were read, the insert's count, and whether the IDs rose.
    private static void nextId(Connection c, long k, Job job) throws SQLException {
        List<Long> ids = new ArrayList<>();
        job.step("autocommit");
        try (PreparedStatement ps = c.prepareStatement("SELECT shardgate.next_id() AS id")) {
            for (int i = 0; i < 8; i++) {
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    if (!rs.getMetaData().getColumnLabel(1).equals("id"))
                        throw new IllegalStateException("column " + rs.getMetaData().getColumnLabel(1));
                    ids.add(rs.getLong(1));
                }
            }
        }
        job.record(ids.size());
        job.step("in_tx");
        c.setAutoCommit(false);
        try (PreparedStatement ps = c.prepareStatement("SELECT shardgate.next_id()")) {
            for (int i = 0; i < 3; i++) {
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    ids.add(rs.getLong(1));
                }
            }
        }
        job.record(insert(c, k, "jdbc-next-id", 1));
        c.commit();
        job.step("rising");
        boolean rising = true;
        for (int i = 1; i < ids.size(); i++)
            rising &= ids.get(i) > ids.get(i - 1) && ids.get(i - 1) > 0;
        job.record(rising ? "ok" : ids.toString());
    }

    // CRUD by key on a text-keyed (jdbc_text) or uuid-keyed (jdbc_uuid) table, keys made from
    // the numbers given: "t-<n>" (setString: a varchar parameter), or the UUID whose high 64
    // bits are 0x5347 and low 64 bits n (setObject(UUID)). Each key: insert, select, update,
    // select; the first is deleted and read again (gone); the others stay.
    private static void otherKeys(Connection c, long[] ns, boolean uuid, Job job) throws SQLException {
        String t = uuid ? "jdbc_uuid" : "jdbc_text";
        for (int i = 0; i < ns.length; i++) {
            Object key = uuid ? (Object) new java.util.UUID(0x5347L, ns[i]) : "t-" + ns[i];
            String at = "key" + i + ".";
            job.step(at + "insert");
            try (PreparedStatement ps = c.prepareStatement("INSERT INTO " + t + " (k, v, n) VALUES (?, ?, ?)")) {
                ps.setObject(1, key);
                ps.setString(2, "v" + i);
                ps.setLong(3, i);
                job.record(ps.executeUpdate());
            }
            job.step(at + "select");
            job.record(keyRows(c, t, key));
            job.step(at + "update");
            try (PreparedStatement ps = c.prepareStatement("UPDATE " + t + " SET n = n + 10 WHERE k = ?")) {
                ps.setObject(1, key);
                job.record(ps.executeUpdate());
            }
            job.step(at + "select_after_update");
            job.record(keyRows(c, t, key));
            if (i == 0) {
                job.step(at + "delete");
                try (PreparedStatement ps = c.prepareStatement("DELETE FROM " + t + " WHERE k = ?")) {
                    ps.setObject(1, key);
                    job.record(ps.executeUpdate());
                }
                job.step(at + "select_after_delete");
                job.record(keyRows(c, t, key));
            }
        }
    }

    private static List<Object> keyRows(Connection c, String t, Object key) throws SQLException {
        try (PreparedStatement ps = c.prepareStatement("SELECT v, n FROM " + t + " WHERE k = ?")) {
            ps.setObject(1, key);
            return rows(ps);
        }
    }

    private static void txCommit(Connection c, long k, Job job) throws SQLException {
        job.step("autocommit_off");
        c.setAutoCommit(false);
        job.step("insert");
        job.record(insert(c, k, "jdbc-commit", 1));
        job.step("update");
        try (PreparedStatement ps = c.prepareStatement(
                "UPDATE accounts SET balance = balance + ? WHERE id = ?")) {
            ps.setLong(1, 10);
            ps.setLong(2, k);
            job.record(ps.executeUpdate());
        }
        job.step("select");
        job.record(select(c, k));
        job.step("commit");
        c.commit();
        job.record("ok");
    }

    // Ten transfers of 1 from existing row a to existing row b in one transaction (the
    // PreparedStatement past the prepare threshold), both balances read back, committed; then
    // the same rolled back. For tests/integration/test_transactions.py: a and b live on
    // different shards, so the proxy commits with two-phase commit.
    private static void transfer(Connection c, long a, long b, Job job) throws SQLException {
        c.setAutoCommit(false);
        for (String end : new String[] {"commit", "rollback"}) {
            job.step("transfer_" + end);
            List<Object> counts = new ArrayList<>();
            try (PreparedStatement ps = c.prepareStatement(
                    "UPDATE accounts SET balance = balance + ? WHERE id = ?")) {
                for (int i = 0; i < 10; i++) {
                    ps.setLong(1, -1);
                    ps.setLong(2, a);
                    counts.add(ps.executeUpdate());
                    ps.setLong(1, 1);
                    ps.setLong(2, b);
                    counts.add(ps.executeUpdate());
                }
            }
            job.record(counts);
            job.step("balances_" + end);
            List<Object> both = new ArrayList<>();
            try (PreparedStatement ps = c.prepareStatement(
                    "SELECT balance FROM accounts WHERE id = ?")) {
                for (long k : new long[] {a, b}) {
                    ps.setLong(1, k);
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        both.add(rs.getLong(1));
                    }
                }
            }
            job.record(both);
            job.step(end);
            if (end.equals("commit"))
                c.commit();
            else
                c.rollback();
            job.record("ok");
        }
    }

    // SET LOCAL as a transaction's first statement (pgjdbc sends BEGIN and it as two unnamed
    // statements before one Sync), then statements on the key: they must not be pinned to the
    // default shard by the SET LOCAL, and the setting holds inside the transaction only.
    private static void setLocalFirst(Connection c, long k, Job job) throws SQLException {
        c.setAutoCommit(false);
        job.step("set_local");
        try (Statement st = c.createStatement()) {
            st.execute("SET LOCAL statement_timeout = '7s'");
            job.record("ok");
        }
        job.step("insert");
        job.record(insert(c, k, "jdbc-set-local", 1));
        job.step("show_in_tx");
        try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery("SHOW statement_timeout")) {
            rs.next();
            job.record(rs.getString(1));
        }
        job.step("commit");
        c.commit();
        job.record("ok");
    }

    // The same, rolled back: the transaction saw its row, and nothing is left afterwards.
    private static void txRollback(Connection c, long k, Job job) throws SQLException {
        job.step("autocommit_off");
        c.setAutoCommit(false);
        job.step("insert");
        job.record(insert(c, k, "jdbc-rollback", 1));
        job.step("update");
        try (PreparedStatement ps = c.prepareStatement(
                "UPDATE accounts SET balance = balance + ? WHERE id = ?")) {
            ps.setLong(1, 10);
            ps.setLong(2, k);
            job.record(ps.executeUpdate());
        }
        job.step("select");
        job.record(select(c, k));
        job.step("rollback");
        c.rollback();
        job.record("ok");
        // A new transaction (on the primary) does not see the row.
        job.step("select_after_rollback");
        job.record(select(c, k));
        job.step("commit_after_rollback");
        c.commit();
        job.record("ok");
    }

    // One PreparedStatement executed 10 times in a transaction (past prepareThreshold, so pgjdbc
    // switches to a named server-side statement), then 10 more times in a second transaction.
    private static void txRepeat(Connection c, long k, Job job) throws SQLException {
        job.step("autocommit_off");
        c.setAutoCommit(false);
        job.step("insert");
        job.record(insert(c, k, "jdbc-repeat", 0));
        try (PreparedStatement ps = c.prepareStatement(
                "UPDATE accounts SET balance = balance + 1 WHERE id = ? RETURNING balance")) {
            for (int tx = 1; tx <= 2; tx++) {
                List<Object> balances = new ArrayList<>();
                job.step("repeat_tx" + tx);
                for (int i = 0; i < 10; i++) {
                    ps.setLong(1, k);
                    try (ResultSet rs = ps.executeQuery()) {
                        while (rs.next()) {
                            balances.add(rs.getLong(1));
                        }
                    }
                }
                job.record(balances);
                job.step("server_prepared_tx" + tx);
                job.record(ps.unwrap(org.postgresql.PGStatement.class).isUseServerPrepare());
                job.step("select_tx" + tx);
                job.record(select(c, k));
                job.step("commit_tx" + tx);
                c.commit();
                job.record("ok");
            }
        }
    }

    // A batch of INSERTs (with reWriteBatchedInserts=true in the URL pgjdbc sends 5 rows as one
    // statement of 4 rows and one of 1 row, before one Sync), in autocommit or in a transaction.
    private static void batch(Connection c, long[] keys, boolean tx, Job job) throws SQLException {
        if (tx) {
            job.step("autocommit_off");
            c.setAutoCommit(false);
        }
        job.step("execute_batch");
        try (PreparedStatement ps = c.prepareStatement(INSERT)) {
            for (long k : keys) {
                ps.setLong(1, k);
                ps.setString(2, tx ? "jdbc-batch-tx" : "jdbc-batch");
                ps.setLong(3, 5);
                ps.addBatch();
            }
            List<Object> counts = new ArrayList<>();
            for (int n : ps.executeBatch()) {
                counts.add(n);
            }
            job.record(counts);
        }
        if (tx) {
            // Read them back in the same transaction: one statement whose keys are on one shard.
            job.step("count_in_tx");
            StringBuilder in = new StringBuilder();
            for (int i = 0; i < keys.length; i++) {
                in.append(i == 0 ? "?" : ", ?");
            }
            try (PreparedStatement ps = c.prepareStatement(
                    "SELECT count(*), sum(balance) FROM accounts WHERE id IN (" + in + ")")) {
                for (int i = 0; i < keys.length; i++) {
                    ps.setLong(i + 1, keys[i]);
                }
                job.record(rows(ps));
            }
            job.step("commit");
            c.commit();
            job.record("ok");
        }
    }

    // A unique violation inside a transaction, the rollback, then a transaction that succeeds,
    // all on one connection. k1 and k2 are on the same shard.
    private static void errorRecovery(Connection c, long k1, long k2, Job job) throws SQLException {
        job.step("insert_autocommit");
        job.record(insert(c, k1, "jdbc-first", 1));
        job.step("autocommit_off");
        c.setAutoCommit(false);
        job.step("insert_tx1");
        job.record(insert(c, k2, "jdbc-rolled-back", 1));
        job.step("duplicate");
        job.record(expectError(() -> insert(c, k1, "jdbc-duplicate", 1)));
        job.step("after_error");
        job.record(expectError(() -> select(c, k2)));
        job.step("rollback");
        c.rollback();
        job.record("ok");
        job.step("insert_tx2");
        job.record(insert(c, k2, "jdbc-second", 2));
        job.step("update_tx2");
        try (PreparedStatement ps = c.prepareStatement(
                "UPDATE accounts SET balance = balance + 1 WHERE id = ?")) {
            ps.setLong(1, k1);
            job.record(ps.executeUpdate());
        }
        job.step("select_tx2");
        List<Object> both = new ArrayList<>();
        both.add(select(c, k1));
        both.add(select(c, k2));
        job.record(both);
        job.step("commit");
        c.commit();
        job.record("ok");
    }

    private interface Sql {
        Object run() throws SQLException;
    }

    /** Runs a statement that must fail and returns its SQLSTATE. */
    private static String expectError(Sql body) throws SQLException {
        try {
            body.run();
        } catch (SQLException e) {
            return e.getSQLState();
        }
        throw new UnexpectedSuccess("the statement succeeded, an error was expected");
    }

    private static int insert(Connection c, long k, String owner, long balance) throws SQLException {
        try (PreparedStatement ps = c.prepareStatement(INSERT)) {
            ps.setLong(1, k);
            ps.setString(2, owner);
            ps.setLong(3, balance);
            return ps.executeUpdate();
        }
    }

    private static List<Object> select(Connection c, long k) throws SQLException {
        try (PreparedStatement ps = c.prepareStatement(SELECT)) {
            ps.setLong(1, k);
            return rows(ps);
        }
    }

    private static List<Object> rows(PreparedStatement ps) throws SQLException {
        List<Object> out = new ArrayList<>();
        try (ResultSet rs = ps.executeQuery()) {
            ResultSetMetaData md = rs.getMetaData();
            while (rs.next()) {
                List<Object> row = new ArrayList<>();
                for (int i = 1; i <= md.getColumnCount(); i++) {
                    row.add(rs.getObject(i));
                }
                out.add(row);
            }
        }
        return out;
    }

    private static String errorJson(String step, String sqlstate, String message) {
        return "{\"step\": " + json(step) + ", \"sqlstate\": " + json(sqlstate)
            + ", \"message\": " + json(message) + "}";
    }

    /** JSON for null, booleans, numbers, strings and lists of those. */
    private static String json(Object v) {
        if (v == null) {
            return "null";
        }
        if (v instanceof Boolean || v instanceof Integer || v instanceof Long
                || v instanceof Short) {
            return v.toString();
        }
        if (v instanceof java.math.BigDecimal || v instanceof java.math.BigInteger) {
            return v.toString();
        }
        if (v instanceof List) {
            StringBuilder b = new StringBuilder("[");
            List<?> l = (List<?>) v;
            for (int i = 0; i < l.size(); i++) {
                b.append(i == 0 ? "" : ", ").append(json(l.get(i)));
            }
            return b.append(']').toString();
        }
        String s = v.toString();
        StringBuilder b = new StringBuilder("\"");
        for (int i = 0; i < s.length(); i++) {
            char ch = s.charAt(i);
            switch (ch) {
                case '"': b.append("\\\""); break;
                case '\\': b.append("\\\\"); break;
                case '\n': b.append("\\n"); break;
                case '\r': b.append("\\r"); break;
                case '\t': b.append("\\t"); break;
                default:
                    if (ch < 0x20) {
                        b.append(String.format("\\u%04x", (int) ch));
                    } else {
                        b.append(ch);
                    }
            }
        }
        return b.append('"').toString();
    }
}
