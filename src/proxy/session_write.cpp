// Client session, part: one write that spans shards (router::StatementPlan::multi_write), in
// either protocol. An UPDATE or DELETE runs alike on each shard concerned; a multi-row INSERT
// ... VALUES is cut so that each shard gets only the rows it owns (executor/split.h), with its
// parameters renumbered when it came through the extended protocol. It runs inside the
// client's transaction, or, in autocommit, inside one of its own that commits like any
// transaction across shards (two-phase commit when rows changed on several). See session.h.
#include "proxy/session.h"

#include "executor/split.h"
#include "proxy/errors.h"
#include "router/literals.h"

#include <algorithm>
#include <cstdlib>

namespace sg::proxy {

namespace {

constexpr uint64_t bit(size_t shard) {
  return uint64_t(1) << shard;
}

} // namespace

// The extended protocol's messages for one shard's part, on b: the client's statement as the
// shard runs it (unnamed), Bind of the parameters `numbers` (1-based, of the client's Bind) to
// the unnamed portal, [Describe portal,] Execute, Sync. Everything b answers goes to `capture`.
Task<BackendConn *> Session::extended_captured(size_t shard, const std::string &text,
                                               const std::vector<uint32_t> &numbers,
                                               const ExtendedRead &x, std::string &capture,
                                               bool &ok) {
  sink_ = &capture;
  BackendConn *b = co_await attach(shard, false);
  ok = false;
  if (b) {
    wbuf_.clear();
    prepare_backend(*b, wbuf_);
    std::vector<uint32_t> types;
    for (uint32_t n : numbers)
      types.push_back(n - 1 < x.types->size() ? (*x.types)[n - 1] : 0);
    protocol::parse(wbuf_, "", text, types);
    exp_.emplace_back(Expect::one, true);
    protocol::bind_subset(wbuf_, *x.bind, x.bind_body, "", "", numbers);
    exp_.emplace_back(Expect::one, true);
    if (x.describe) {
      protocol::Writer(wbuf_, 'D').u8('P').cstr("").finish();
      exp_.emplace_back(Expect::one, true);
    }
    protocol::Writer(wbuf_, 'E').cstr("").i32(0).finish();
    exp_.emplace_back(Expect::execute, true);
    protocol::Writer(wbuf_, 'S').finish();
    exp_.emplace_back(Expect::sync, true);
    b->unnamed_owner = 0;
    ErrorCode ec;
    co_await write_all(b->sock, wbuf_, ec);
    ok = !ec && co_await relay(*b);
    if (!ok)
      b->broken = true;
  }
  sink_ = &out_;
  co_return b;
}

// The client gets one RowDescription (extended: if it asked, else NoData) and the RETURNING
// rows of every shard (an INSERT's in the order of its VALUES), one CommandComplete with the
// summed count, or the first shard's error naming it (then nothing is applied, in autocommit;
// in a transaction block, the transaction fails). x: the statement came through the extended
// protocol (the caller has answered its Parse and Bind).
Task<bool> Session::scatter_write(const router::PlannedText &pt, const std::string &sql,
                                  const ExtendedRead *x, bool ready_after, bool *failed) {
  const router::StatementPlan &st = pt.analysis->stmts[0];
  struct Part {
    size_t shard;
    std::string text;
    std::vector<uint32_t> params; // extended: the client's parameters it is sent (1-based)
  };
  std::vector<Part> work;    // by shard
  std::vector<size_t> order; // a multi-row INSERT: each row's shard, in the order of VALUES
  std::vector<router::ParamValue> params;
  if (x)
    for (size_t i = 0; i < x->bind->params.size(); ++i)
      params.push_back({x->bind->params[i], protocol::bind_param_format(*x->bind, i)});
  std::vector<uint32_t> all_params;
  for (size_t i = 1; i <= params.size(); ++i)
    all_params.push_back(uint32_t(i));
  auto refuse_split = [&] {
    error("0A000", "cannot split this INSERT's rows between shards",
          "send one INSERT per shard key's shard");
    if (in_tx())
      fail_transaction_by_proxy();
    if (ready_after)
      ready();
    if (failed)
      *failed = true;
  };
  if (st.insert_values) {
    sh_.router.resolve(st, sql, pt.scan, params, w_->place().keys.get(), true, &order);
    if (order.size() != st.value_rows.size() ||
        std::any_of(order.begin(), order.end(), [](size_t s) { return s >= 64; })) {
      refuse_split();
      co_return true;
    }
    std::string_view text = std::string_view(sql).substr(st.location, st.length);
    std::vector<executor::ParamRef> refs;
    if (x) {
      auto spans = router::param_spans(sql);
      if (!spans) {
        refuse_split();
        co_return true;
      }
      for (const auto &p : *spans)
        if (p.start >= st.location && p.end <= st.location + st.length)
          refs.push_back({p.start - st.location, p.end - st.location, p.number});
    }
    std::vector<size_t> shards(order);
    std::sort(shards.begin(), shards.end());
    shards.erase(std::unique(shards.begin(), shards.end()), shards.end());
    for (size_t s : shards) {
      std::vector<bool> keep(order.size());
      for (size_t i = 0; i < order.size(); ++i)
        keep[i] = order[i] == s;
      auto part = executor::cut_rows(text, st.value_rows, keep, refs);
      work.push_back({s, std::move(part.text), std::move(part.params)});
    }
  } else {
    std::vector<size_t> shards;
    if (scatter_shards_) {
      for (size_t s = 0; s < 64; ++s)
        if (scatter_shards_ & bit(s))
          shards.push_back(s);
    } else {
      const Placement &place = w_->place();
      shards.assign(place.keys->ring_shard.begin(), place.keys->ring_shard.end());
      std::sort(shards.begin(), shards.end());
      shards.erase(std::unique(shards.begin(), shards.end()), shards.end());
    }
    for (size_t s : shards)
      work.push_back({s, sql, all_params});
  }
  bool implicit = !in_tx();
  if (implicit)
    open_own_tx();
  std::string head, tag_word;
  std::vector<std::vector<std::string>> rows(work.size()); // DataRows, per shard
  uint64_t count = 0;
  bool have_count = false;
  protocol::ErrorInfo failure;
  std::string failed_on;
  for (size_t wi = 0; wi < work.size(); ++wi) {
    size_t s = work[wi].shard;
    if (tx_shard_ >= 0 && !(tx_shards_ & bit(s))) {
      std::string why = join_refusal(s);
      if (!why.empty()) {
        failure = {"ERROR", "0A000", "an UPDATE or DELETE across shards cannot run here: " + why,
                   "", "keep savepoints in transactions on one shard"};
        break;
      }
      deferred_ = join_text();
    }
    std::string capture;
    auto started = w_->poller.now();
    if (st.positional) // INSERT without a column list: see key_guard()
      guard_ = key_guard({st.table});
    bool ok = false;
    BackendConn *b = nullptr;
    if (x)
      b = co_await extended_captured(s, work[wi].text, work[wi].params, *x, capture, ok);
    else
      b = co_await query_captured(s, work[wi].text, capture, ok);
    if (b && ok) {
      if (b->tx_status != 'I')
        bind_tx(int(s));
      record_query(s, *b, QueryKind::write, started, pt.scan.normalized);
    }
    // What the shard answered: its rows are kept, its error ends the statement.
    bool has_error = !ok;
    if (!ok)
      failure = {"ERROR", "08006", "lost the connection to shard \"" + sh_.shard_name(s) + "\"", "",
                 ""};
    uint64_t shard_count = 0;
    for (size_t pos = 0; pos < capture.size();) {
      auto f = protocol::decode_frame(reinterpret_cast<const uint8_t *>(capture.data()) + pos,
                                      capture.size() - pos, 1u << 30);
      if (f.status != protocol::DecodeStatus::ready)
        break;
      std::string_view body = f.body_view();
      std::string_view frame(capture.data() + pos, f.frame_len);
      if (f.type == 'E') {
        if (!has_error || failure.sqlstate == "08006")
          failure = protocol::parse_error_response(body);
        has_error = true;
      } else if (f.type == 'T' && head.empty()) {
        head.assign(frame);
      } else if (f.type == 'D') {
        rows[wi].emplace_back(frame);
      } else if (f.type == 'C' && !body.empty()) {
        std::string_view tag(body.data(), body.size() - 1);
        size_t sp = tag.rfind(' ');
        if (sp != std::string_view::npos) {
          tag_word.assign(tag.substr(0, sp));
          shard_count = std::strtoull(std::string(tag.substr(sp + 1)).c_str(), nullptr, 10);
          count += shard_count;
          have_count = true;
        }
      }
      pos += f.frame_len;
    }
    if (has_error) {
      failed_on = sh_.shard_name(s);
      break;
    }
    if (shard_count > 0)
      tx_writers_ |= bit(s); // only the shards whose rows changed need two-phase commit
  }
  bool answer = co_await end_statement_across(
      implicit, failure, failed_on, "the statement was rolled back on every shard", ready_after);
  if (!answer) {
    if (failed)
      *failed = true;
    co_return true;
  }
  if (x && x->describe && head.empty())
    protocol::no_data(out_);
  else if (!x || x->describe)
    out_ += head;
  if (!order.empty()) {
    // RETURNING rows in the order of VALUES: each shard returned its rows in its own order.
    std::vector<size_t> next(work.size(), 0);
    std::vector<size_t> slot(64, 0);
    for (size_t wi = 0; wi < work.size(); ++wi)
      slot[work[wi].shard] = wi;
    for (size_t s : order) {
      size_t wi = slot[s];
      if (next[wi] < rows[wi].size())
        out_ += rows[wi][next[wi]++];
    }
    for (size_t wi = 0; wi < work.size(); ++wi) // (none left: one row back per row sent)
      for (; next[wi] < rows[wi].size(); ++next[wi])
        out_ += rows[wi][next[wi]];
  } else {
    for (auto &shard_rows : rows)
      for (auto &r : shard_rows)
        out_ += r;
  }
  if (have_count)
    protocol::command_complete(out_, tag_word + " " + std::to_string(count));
  if (ready_after)
    ready();
  co_return true;
}

} // namespace sg::proxy
