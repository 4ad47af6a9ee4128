// shardgate.next_id(): IDs the proxy answers itself (src/ids/generator.h), with no shard.
#include "proxy/batch.h"
#include "proxy/session.h"
#include "proxy/session_util.h"

#include <chrono>

namespace sg::proxy {

// Why the generator gave no ID, as the client hears it.
router::RouteError Session::no_id(const ids::Generator::Result &r) const {
  std::string why = r.status == ids::Generator::Status::wait
                        ? "the clock is " + std::to_string(r.wait_ms) +
                              " ms behind the IDs already given (was it set back?)"
                        : r.why;
  return {"55000", "shardgate.next_id() cannot give an ID now: " + why,
          sh_.cfg.ids.instance < 0 && !sh_.cfg.metadata.enabled
              ? "set [ids] instance (0-1023, unique per proxy) or enable [metadata]"
              : "retry; the proxy's log says more"};
}

// One ID. When the generator has borrowed too far ahead of the clock (over 4096 IDs in a
// millisecond for a while, or the clock set back while it did), it waits for the clock, up to
// a second; nullopt with `err` when there is none to give.
Task<std::optional<int64_t>> Session::take_id(router::RouteError &err) {
  for (int64_t waited = 0;;) {
    auto r = sh_.ids.next(ids::unix_now_ms(), ids::steady_now_ms());
    if (r.status == ids::Generator::Status::ok)
      co_return r.id;
    if (r.status == ids::Generator::Status::unavailable || waited + r.wait_ms > 1000) {
      err = no_id(r);
      co_return std::nullopt;
    }
    waited += r.wait_ms;
    Timer t(co_await asio::this_coro::executor, std::chrono::milliseconds(r.wait_ms));
    ErrorCode ec;
    co_await t.async_wait(asio::redirect_error(use_awaitable, ec));
  }
}

// SELECT shardgate.next_id() as a simple query: one int8 column, one row.
Task<void> Session::answer_next_id(const std::string &column) {
  router::RouteError err;
  auto id = co_await take_id(err);
  if (!id) {
    error(err.sqlstate, err.message, err.hint);
    if (in_tx())
      fail_transaction_by_proxy();
    ready();
    co_return;
  }
  protocol::row_description(*sink_, {{column, 0, 0, 20, 8, -1, 0}});
  protocol::data_row(*sink_, {std::to_string(*id)});
  protocol::command_complete(*sink_, "SELECT 1");
  ready();
}

// The Execute of a portal of SELECT shardgate.next_id() (extended protocol): the backend
// parsed, bound and described "SELECT NULL::bigint AS name" in its place; the proxy answers
// the Execute with the ID (it.id_row, before the tag), text or binary as the portal's Bind
// asked. Taken here, without waiting: what refuses it is the batch's error at this Execute.
std::optional<router::RouteError> Session::next_id_row(const BatchPlan &bp, BatchItem &it) {
  const BatchItem *bind = nullptr;
  for (const BatchItem &b : bp.items)
    if (b.m->type == 'B' && b.name == it.name && !b.error)
      bind = &b;
  if (!bind || !bind->bind.results)
    return router::RouteError{"0A000",
                              "shardgate.next_id() through a portal bound in an earlier batch "
                              "is not supported",
                              "bind and execute it before the same Sync"};
  std::string_view body = bind->m->body;
  protocol::Reader r(body.substr(size_t(bind->bind.results - body.data())));
  int16_t n = r.i16(), format = n > 0 ? r.i16() : 0;
  auto g = sh_.ids.next(ids::unix_now_ms(), ids::steady_now_ms());
  if (g.status != ids::Generator::Status::ok)
    return no_id(g);
  std::string value;
  if (format == 1) {
    for (int i = 7; i >= 0; --i)
      value.push_back(char(uint8_t(uint64_t(g.id) >> (8 * i))));
  } else {
    value = std::to_string(g.id);
  }
  it.id_row.clear();
  protocol::data_row(it.id_row, {value});
  it.special = true;
  it.tag = "SELECT 1";
  return std::nullopt;
}

} // namespace sg::proxy
