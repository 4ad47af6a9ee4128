// Client session, part: COPY t FROM STDIN into a sharded table (router's CopyIn). Every shard
// that owns keys runs the same COPY inside one transaction across shards (the client's, or one
// of its own); the client's data is cut into rows (executor::CopySplitter) and each row goes
// to its key's owner. One bad row, a CopyFail or any shard's error fails the COPY on every
// shard, leaving nothing; otherwise it commits like any transaction across shards (two-phase
// commit when rows went to several). See session.h.
#include "proxy/session.h"

#include "executor/copy.h"
#include "proxy/errors.h"

#include <algorithm>

namespace sg::proxy {

namespace {

constexpr uint64_t bit(size_t shard) {
  return uint64_t(1) << shard;
}

void copy_frame(std::string &out, char type, std::string_view body) {
  protocol::Writer(out, type).raw(body).finish();
}

} // namespace

// Reads b's frames up to ReadyForQuery: the first error into `err` (sqlstate empty: none), the
// command tag into `tag`. False when the connection is lost.
Task<bool> Session::drain_to_ready(BackendConn &b, protocol::ErrorInfo &err, std::string &tag) {
  for (;;) {
    char type = 0;
    std::string body;
    bool got = co_await next_frame(b, type, body);
    if (!got)
      co_return false;
    if (type == 'E' && err.sqlstate.empty())
      err = protocol::parse_error_response(body);
    else if (type == 'C' && !body.empty())
      tag.assign(body.data(), body.size() - 1);
    else if (type == 'Z') {
      b.tx_status = body.empty() ? 'I' : body[0];
      co_return true;
    }
  }
}

Task<bool> Session::copy_in(const std::string &sql) {
  const router::StatementPlan &st = query_plan_.analysis->stmts[0];
  const router::StatementPlan::CopyIn &ci = *st.copy_in;
  std::vector<size_t> shards;
  {
    const Placement &place = w_->place();
    shards.assign(place.keys->ring_shard.begin(), place.keys->ring_shard.end());
    std::sort(shards.begin(), shards.end());
    shards.erase(std::unique(shards.begin(), shards.end()), shards.end());
  }
  const size_t n = shards.size();
  bool implicit = !in_tx();
  if (implicit)
    open_own_tx();
  protocol::ErrorInfo failure;
  std::string failed_on;
  auto fail = [&](const std::string &shard, protocol::ErrorInfo e) {
    if (failure.sqlstate.empty()) {
      failure = std::move(e);
      failed_on = shard;
    }
  };
  // Each shard: its transaction, then the COPY, up to its CopyInResponse.
  std::vector<BackendConn *> bs(n, nullptr);
  std::vector<bool> copying(n, false);
  std::string copy_response;
  int key_field = ci.key_field;
  for (size_t i = 0; i < n && failure.sqlstate.empty(); ++i) {
    size_t s = shards[i];
    if (s >= 64) {
      fail("-", {"ERROR", "0A000", "COPY across more than 64 shards is not supported", "", ""});
      break;
    }
    if (tx_shard_ >= 0 && !(tx_shards_ & bit(s))) {
      std::string why = join_refusal(s);
      if (!why.empty()) {
        fail("-", {"ERROR", "0A000", "COPY into a sharded table cannot run here: " + why, "",
                   "keep savepoints in transactions on one shard"});
        break;
      }
      deferred_ = join_text();
    }
    std::string capture;
    sink_ = &capture;
    BackendConn *b = co_await attach(s, false);
    sink_ = &out_;
    if (!b) { // unreachable() said why, into the capture
      auto f = protocol::decode_frame(reinterpret_cast<const uint8_t *>(capture.data()),
                                      capture.size(), 1u << 30);
      fail(sh_.shard_name(s),
           f.status == protocol::DecodeStatus::ready && f.type == 'E'
               ? protocol::parse_error_response(f.body_view())
               : protocol::ErrorInfo{"ERROR", "08006", "cannot reach the shard", "", ""});
      break;
    }
    bs[i] = b;
    wbuf_.clear();
    prepare_backend(*b, wbuf_);
    int swallow = int(exp_.size());
    exp_.clear();
    bool catalog = key_field < 0 && i == 0; // no column list: the table's own column order
    if (catalog) {
      std::string rel;
      for (char c : sh_.cfg.tables[size_t(st.table)].name)
        rel += c == '\'' ? std::string("''") : std::string(1, c);
      protocol::query(wbuf_, "SELECT attname FROM pg_attribute WHERE attrelid = '" + rel +
                                 "'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum");
    }
    protocol::query(wbuf_, sql);
    b->unnamed_owner = 0;
    ErrorCode ec;
    co_await write_all(b->sock, wbuf_, ec);
    if (ec) {
      on_backend_lost(*b);
      fail(sh_.shard_name(s), {"ERROR", "08006", "connection to the shard lost", "", ""});
      break;
    }
    // The settings' answers, the column names, then the COPY's CopyInResponse (or its error).
    size_t column = 0;
    bool lost = false;
    for (;;) {
      char type = 0;
      std::string body;
      bool got = co_await next_frame(*b, type, body);
      if (!got) {
        lost = true;
        break;
      }
      if (swallow > 0) {
        if (type == 'Z')
          --swallow;
        continue;
      }
      if (catalog) {
        if (type == 'D') {
          protocol::Row row;
          if (protocol::parse_data_row(body, row) && !row.empty() && row[0] &&
              *row[0] == sh_.cfg.tables[size_t(st.table)].key)
            key_field = int(column);
          ++column;
        } else if (type == 'E') {
          fail(sh_.shard_name(s), protocol::parse_error_response(body));
        } else if (type == 'Z') {
          catalog = false;
        }
        continue;
      }
      if (type == 'G') {
        copying[i] = true;
        if (copy_response.empty())
          copy_frame(copy_response, 'G', body);
        break;
      }
      if (type == 'E')
        fail(sh_.shard_name(s), protocol::parse_error_response(body));
      if (type == 'Z') {
        b->tx_status = body.empty() ? 'I' : body[0];
        break;
      }
    }
    if (lost) {
      fail(sh_.shard_name(s), {"ERROR", "08006", "connection to the shard lost", "", ""});
      break;
    }
    bind_tx(int(s));
    if (failure.sqlstate.empty() && key_field < 0)
      fail("-", {"ERROR", "42703",
                 "shard key column \"" + sh_.cfg.tables[size_t(st.table)].key +
                     "\" not found in the table",
                 "", ""});
  }

  // The rows, each to its owner's COPY.
  bool client_failed = false;
  if (failure.sqlstate.empty()) {
    out_ += copy_response;
    if (!co_await flush())
      co_return false;
    executor::CopyFormat fmt;
    fmt.csv = ci.csv;
    fmt.delimiter = ci.delimiter;
    fmt.null_text = ci.null_text;
    fmt.quote = ci.quote;
    fmt.escape = ci.escape;
    fmt.header = ci.header;
    fmt.key_field = size_t(key_field);
    executor::CopySplitter splitter(fmt);
    std::vector<std::string> pend(n);
    std::vector<int> slot(64, -1);
    for (size_t i = 0; i < n; ++i)
      slot[shards[i]] = int(i);
    const router::Topology *topo = w_->place().keys.get();
    auto on_row = [&](std::string_view row, const std::optional<std::string> &key,
                      executor::CopySplitter::RowKind kind) {
      if (kind != executor::CopySplitter::RowKind::data) { // a header, \.: every shard
        for (auto &p : pend)
          p.append(row);
        return true;
      }
      if (!key) {
        fail("-", {"ERROR", "23502",
                   "null value in shard key column \"" + sh_.cfg.tables[size_t(st.table)].key +
                       "\" of a COPY row (or the row has too few columns)",
                   "", ""});
        return false;
      }
      std::string err;
      auto owner = sh_.router.owner_of_text(st.table, *key, topo, err);
      if (!owner || *owner >= 64 || slot[*owner] < 0) {
        fail("-", {"ERROR", "22P02", owner ? "the row's owner is not a shard of this COPY" : err,
                   "", ""});
        return false;
      }
      pend[size_t(slot[*owner])].append(row);
      return true;
    };
    std::string split_error;
    for (bool done = false; !done;) {
      auto f = protocol::decode_frame(cbuf_.data(), cbuf_.size(), sh_.cfg.proxy.max_message_bytes);
      if (f.status == protocol::DecodeStatus::need_more) {
        ErrorCode ec;
        size_t avail = 0;
        uint8_t *p = cbuf_.prepare(read_size(f.frame_len, cbuf_.size()), avail);
        size_t got = co_await read_some(sock_, p, avail, ec);
        if (ec) { // the client left: every shard's COPY and transaction end with the connections
          for (auto *b : bs)
            if (b)
              b->broken = true;
          detach_if_idle();
          co_return false;
        }
        cbuf_.commit(got);
        continue;
      }
      if (f.status == protocol::DecodeStatus::error) {
        for (auto *b : bs)
          if (b)
            b->broken = true;
        co_return co_await fatal("08P01", std::string("invalid message during COPY: ") + f.error);
      }
      char t = f.type;
      std::string_view body = f.body_view();
      bool ok = true;
      if (t == 'd') {
        ok = splitter.feed(body, on_row);
      } else if (t == 'c') {
        ok = splitter.finish(on_row, split_error);
        done = true;
      } else if (t == 'f') {
        client_failed = true;
        fail("-",
             {"ERROR", "57014",
              "COPY from stdin failed: " + std::string(body.substr(0, body.find('\0'))), "", ""});
        done = true;
      } else if (t != 'H' && t != 'S') {
        for (auto *b : bs)
          if (b)
            b->broken = true;
        co_return co_await fatal("08P01", "unexpected message type " +
                                              std::to_string(int(uint8_t(t))) + " during COPY");
      }
      cbuf_.consume(f.frame_len);
      if (!ok) {
        if (!split_error.empty())
          fail("-", {"ERROR", "22P04", split_error, "", ""});
        break; // the rest of the client's COPY messages are dropped by the query loop
      }
      for (size_t i = 0; i < n && failure.sqlstate.empty(); ++i) {
        if (pend[i].size() < 65536 && !(done && !pend[i].empty()))
          continue;
        std::string w; // the shard's rows so far, as CopyData of at most 64 kB each
        for (size_t off = 0; off < pend[i].size(); off += 65536)
          copy_frame(w, 'd', std::string_view(pend[i]).substr(off, 65536));
        pend[i].clear();
        ErrorCode ec;
        co_await write_all(bs[i]->sock, w, ec);
        if (ec) {
          on_backend_lost(*bs[i]);
          fail(sh_.shard_name(shards[i]),
               {"ERROR", "08006", "connection to the shard lost", "", ""});
        }
      }
      if (!failure.sqlstate.empty())
        break;
    }
  }

  // The end of every shard's COPY: CopyDone, or CopyFail after any failure.
  uint64_t count = 0;
  for (size_t i = 0; i < n; ++i) {
    if (!copying[i] || bs[i]->broken)
      continue;
    std::string w;
    if (failure.sqlstate.empty())
      copy_frame(w, 'c', {});
    else
      protocol::Writer(w, 'f')
          .cstr(client_failed ? failure.message : "aborted by the proxy")
          .finish();
    ErrorCode ec;
    co_await write_all(bs[i]->sock, w, ec);
    protocol::ErrorInfo err;
    std::string tag;
    bool ok = !ec && co_await drain_to_ready(*bs[i], err, tag);
    if (!ok) {
      on_backend_lost(*bs[i]);
      fail(sh_.shard_name(shards[i]), {"ERROR", "08006", "connection to the shard lost", "", ""});
      continue;
    }
    if (!err.sqlstate.empty() && !client_failed)
      fail(sh_.shard_name(shards[i]), err);
    uint64_t c = 0;
    if (tag.rfind("COPY ", 0) == 0)
      c = std::strtoull(tag.c_str() + 5, nullptr, 10);
    count += c;
    if (c > 0)
      tx_writers_ |= bit(shards[i]);
  }

  bool answer = co_await end_statement_across(implicit, failure, failed_on,
                                              "nothing was copied to any shard");
  if (!answer)
    co_return true;
  protocol::command_complete(out_, "COPY " + std::to_string(count));
  ready();
  co_return true;
}

} // namespace sg::proxy
