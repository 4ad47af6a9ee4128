// Poller and Stream (proxy/poller.h): reads, waits, writes that fill the socket buffer, end of
// stream, a close while a coroutine waits, slot reuse, and shutdown with waiters parked. Real
// sockets (socketpairs), a real io_context; run under ASan+UBSan with leak checks in CI.
#include "proxy/poller.h"

#include <gtest/gtest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>

#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <list>
#include <thread>
#include <string>

namespace sg::proxy {
namespace {

struct Pair {
  int ours = -1, theirs = -1;
  Pair() {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0) {
      ours = fds[0];
      theirs = fds[1];
    }
  }
  ~Pair() {
    if (theirs >= 0)
      ::close(theirs);
  }
};

class PollerTest : public ::testing::Test {
protected:
  void SetUp() override { poller.start(io); }
  void TearDown() override { poller.shutdown(); }
  Stream adopt(int fd) {
    ErrorCode ec;
    uint32_t id = poller.add(fd, ec);
    EXPECT_FALSE(ec) << ec.message();
    return Stream(poller, id);
  }
  // Runs the worker loop until pred holds (or a bound of turns passes).
  template <class Pred> void run_until(Pred pred) {
    for (int i = 0; i < 2000 && !pred(); ++i)
      poller.run_once(10);
  }
  template <class F> void spawn(F f) { asio::co_spawn(io, std::move(f), asio::detached); }
  struct Reader {
    std::string got;
    ErrorCode seen; // how the stream ended
    bool done = false;
  };
  // Spawns a reader that collects what arrives until the stream ends or fails.
  Reader &read_all(Stream &s) {
    Reader &r = readers.emplace_back();
    spawn([&s, &r]() -> Task<void> {
      uint8_t buf[64];
      for (;;) {
        size_t n = co_await read_some(s, buf, sizeof buf, r.seen);
        if (r.seen)
          break;
        r.got.append(reinterpret_cast<char *>(buf), n);
      }
      r.done = true;
    });
    return r;
  }
  std::list<Reader> readers;

  Poller poller; // declared before io: it must outlive io (see Worker)
  asio::io_context io{1};
};

TEST_F(PollerTest, ReadWaitsForDataAndReturnsWhatArrived) {
  Pair pr;
  Stream s = adopt(pr.ours);
  std::string got;
  bool done = false;
  spawn([&]() -> Task<void> {
    ErrorCode ec;
    uint8_t buf[64];
    while (got.size() < 10) {
      size_t n = co_await read_some(s, buf, sizeof buf, ec);
      if (ec)
        break;
      got.append(reinterpret_cast<char *>(buf), n);
    }
    done = true;
  });
  for (int i = 0; i < 5; ++i)
    poller.run_once(0); // nothing to read yet: the coroutine must stay parked
  EXPECT_FALSE(done);
  ASSERT_EQ(::write(pr.theirs, "hello", 5), 5);
  run_until([&] { return got.size() == 5; });
  EXPECT_EQ(got, "hello");
  ASSERT_EQ(::write(pr.theirs, "world", 5), 5);
  run_until([&] { return done; });
  EXPECT_EQ(got, "helloworld");
}

TEST_F(PollerTest, EndOfStreamIsAnError) {
  Pair pr;
  Stream s = adopt(pr.ours);
  Reader &r = read_all(s);
  poller.run_once(0);
  ::close(pr.theirs);
  pr.theirs = -1;
  run_until([&] { return r.done; });
  ASSERT_TRUE(r.done);
  EXPECT_EQ(r.seen, asio::error::eof);
}

// The peer's last bytes and its FIN come as one edge-triggered event: after the (short) read
// of those bytes, the next read must see the end of stream instead of waiting forever.
TEST_F(PollerTest, DataThenCloseInOneEventEndsTheStream) {
  Pair pr;
  Stream s = adopt(pr.ours);
  Reader &r = read_all(s);
  poller.run_once(0); // parked: nothing to read yet
  ASSERT_EQ(::write(pr.theirs, "last", 4), 4);
  ::shutdown(pr.theirs, SHUT_WR);
  run_until([&] { return r.done; });
  ASSERT_TRUE(r.done);
  EXPECT_EQ(r.got, "last");
  EXPECT_EQ(r.seen, asio::error::eof);
}

TEST_F(PollerTest, CloseWhileWaitingResumesTheReaderWithAnError) {
  Pair pr;
  Stream s = adopt(pr.ours);
  Reader &r = read_all(s);
  poller.run_once(0);
  EXPECT_FALSE(r.done);
  s.close(); // e.g. a deadline firing: the reader resumes later, not inside close()
  EXPECT_FALSE(r.done);
  run_until([&] { return r.done; });
  EXPECT_TRUE(r.done);
  EXPECT_TRUE(r.seen);
}

TEST_F(PollerTest, WriteAllWaitsForRoomAndDeliversEverythingInOrder) {
  Pair pr;
  Stream w = adopt(pr.ours);
  Stream r = adopt(pr.theirs);
  pr.theirs = -1; // owned by r now
  std::string payload(8 << 20, '\0');
  for (size_t i = 0; i < payload.size(); ++i)
    payload[i] = char('a' + i % 23);
  std::string got;
  bool wrote = false;
  ErrorCode wec, rec;
  spawn([&]() -> Task<void> {
    co_await write_all(w, payload, wec); // far more than a socket buffer holds
    wrote = true;
  });
  spawn([&]() -> Task<void> {
    std::vector<uint8_t> buf(64 * 1024);
    while (got.size() < payload.size()) {
      size_t n = co_await read_some(r, buf.data(), buf.size(), rec);
      if (rec)
        break;
      got.append(reinterpret_cast<char *>(buf.data()), n);
    }
  });
  run_until([&] { return wrote && got.size() == payload.size(); });
  EXPECT_FALSE(wec);
  EXPECT_FALSE(rec);
  EXPECT_TRUE(wrote);
  EXPECT_TRUE(got == payload);
}

TEST_F(PollerTest, AReusedSlotServesItsNewConnection) {
  Pair a, b;
  Stream s = adopt(a.ours);
  ASSERT_EQ(::write(a.theirs, "x", 1), 1); // an event for the first connection, not harvested
  s.close();
  Stream t = adopt(b.ours); // the same slot, a new generation
  std::string got;
  spawn([&]() -> Task<void> {
    ErrorCode ec;
    uint8_t buf[16];
    size_t n = co_await read_some(t, buf, sizeof buf, ec);
    if (!ec)
      got.assign(reinterpret_cast<char *>(buf), n);
  });
  poller.run_once(0);
  ASSERT_EQ(::write(b.theirs, "new", 3), 3);
  run_until([&] { return !got.empty(); });
  EXPECT_EQ(got, "new");
}

TEST_F(PollerTest, ShutdownEndsParkedCoroutinesWithoutLeaks) {
  Pair pr;
  auto s = std::make_shared<Stream>(adopt(pr.ours));
  bool finished = false;
  spawn([s, &finished]() -> Task<void> {
    ErrorCode ec;
    uint8_t buf[16];
    co_await read_some(*s, buf, sizeof buf, ec);
    finished = true; // never: the coroutine is destroyed while parked
  });
  poller.run_once(0);
  EXPECT_EQ(s.use_count(), 2);
  s.reset();
  poller.shutdown(); // the parked frame (and its copy of the stream) is released via io
  io.restart();
  io.poll();
  EXPECT_FALSE(finished);
}

// The loop blocks in its own epoll_wait, outside Asio's run(): handlers posted from another
// thread (a client handed over, shutdown, a resolver's answer), timers and io.stop() must all
// still reach it.
TEST_F(PollerTest, RunWakesForPostsFromOtherThreadsTimersAndStop) {
  std::atomic<int> posted{0};
  bool timer_fired = false;
  Timer timer(io.get_executor());
  auto guard = asio::make_work_guard(io);
  std::thread loop([&] { poller.run(); });
  for (int i = 0; i < 3; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50)); // the loop is blocked by now
    asio::post(io, [&] {
      ++posted;
      if (posted == 3) { // a timer set from inside the loop wakes it too
        timer.expires_after(std::chrono::milliseconds(30));
        timer.async_wait([&](const ErrorCode &ec) { timer_fired = !ec; });
      }
    });
  }
  for (int i = 0; i < 200 && posted < 3; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(posted, 3);
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  io.stop(); // ends run() even while it is blocked
  loop.join();
  EXPECT_TRUE(timer_fired);
}

} // namespace
} // namespace sg::proxy
