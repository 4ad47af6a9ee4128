// Replica eligibility: lag measurement, hysteresis and the circuit breaker, on a fake clock.
#include "proxy/health.h"
#include "proxy/monitor.h"

#include <gtest/gtest.h>

using namespace sg::proxy;

namespace {

sg::config::Replicas policy() {
  sg::config::Replicas p;
  p.max_lag_bytes = 1000;
  p.max_lag_ms = 5000;
  p.readmit_probes = 3;
  p.failures_to_ban = 3;
  p.ban_base_ms = 100;
  p.ban_max_ms = 1000;
  return p;
}

ReplicaProbe healthy(uint64_t replay) {
  ReplicaProbe p;
  p.ok = true;
  p.in_recovery = true;
  p.receiver_running = true;
  p.replay_lsn = replay;
  p.replay_age_ms = 60000.0; // an idle primary: old timestamp, no lag
  return p;
}

} // namespace

TEST(Lag, BytesAreprimaryMinusReplay) {
  auto r = measure_lag(healthy(900), 1000);
  EXPECT_TRUE(r.known);
  EXPECT_EQ(r.bytes, 100u);
  EXPECT_EQ(*r.ms, 60000u) << "behind in bytes: the replay delay counts";
  auto idle = measure_lag(healthy(1000), 1000);
  EXPECT_EQ(*idle.ms, 0u) << "caught up: an old replay timestamp is not lag";
}

TEST(Lag, FailedProbeIsUnknownAndBrokenReplicaIsNeverZeroLag) {
  ReplicaProbe failed;
  EXPECT_FALSE(measure_lag(failed, 1000).known);
  auto no_receiver = healthy(1000);
  no_receiver.receiver_running = false;
  EXPECT_TRUE(measure_lag(no_receiver, 1000).broken);
  auto promoted = healthy(1000);
  promoted.in_recovery = false;
  EXPECT_TRUE(measure_lag(promoted, 1000).broken);
  EXPECT_FALSE(measure_lag(healthy(1), std::nullopt).known) << "no primary sample: unknown";
}

TEST(Gate, EjectsAboveThresholdAndReadmitsOnlyAfterKProbesUnderHalf) {
  auto p = policy();
  LagGate g(p);
  EXPECT_TRUE(g.observe(measure_lag(healthy(1000), 1000))) << "first good probe admits";
  EXPECT_FALSE(g.observe(measure_lag(healthy(0), 1001))) << "1001 bytes > 1000: ejected";
  // Under the threshold but above half: stays out.
  for (int i = 0; i < 5; ++i)
    EXPECT_FALSE(g.observe(measure_lag(healthy(400), 1000)));
  // Under half: needs 3 in a row; a bad one in between resets the streak.
  EXPECT_FALSE(g.observe(measure_lag(healthy(600), 1000)));
  EXPECT_FALSE(g.observe(measure_lag(healthy(600), 1000)));
  EXPECT_FALSE(g.observe(measure_lag(healthy(0), 1001)));
  EXPECT_FALSE(g.observe(measure_lag(healthy(1000), 1000)));
  EXPECT_FALSE(g.observe(measure_lag(healthy(1000), 1000)));
  EXPECT_TRUE(g.observe(measure_lag(healthy(1000), 1000)));
}

TEST(Gate, UnknownLagAndMissingReceiverEject) {
  auto p = policy();
  LagGate g(p);
  EXPECT_TRUE(g.observe(measure_lag(healthy(5), 5)));
  EXPECT_FALSE(g.observe(measure_lag(ReplicaProbe{}, 5))) << "probe failed: infinite lag";
  LagGate g2(p);
  auto r = healthy(5);
  r.receiver_running = false;
  EXPECT_FALSE(g2.observe(measure_lag(r, 5))) << "a replica with no WAL receiver lags";
}

TEST(Gate, ReplayDelayAboveMaxLagMsEjects) {
  auto p = policy();
  LagGate g(p);
  auto r = healthy(999);
  r.replay_age_ms = 6000.0;
  EXPECT_FALSE(g.observe(measure_lag(r, 1000))) << "1 byte behind for 6 s > max_lag_ms";
}

TEST(Breaker, BansAfterRepeatedFailuresWithCappedBackoffAndOneTrial) {
  auto p = policy();
  Breaker b(p);
  Millis t = 1000;
  b.failure(t);
  b.failure(t);
  EXPECT_TRUE(b.allow(t)) << "2 failures < failures_to_ban";
  b.failure(t);
  EXPECT_FALSE(b.allow(t + 50)) << "banned for ban_base_ms = 100";
  EXPECT_TRUE(b.allow(t + 100)) << "half-open: one trial";
  EXPECT_FALSE(b.allow(t + 101)) << "only one trial at a time";
  b.failure(t + 110); // the trial failed: ban doubles to 200
  EXPECT_FALSE(b.allow(t + 300));
  EXPECT_TRUE(b.allow(t + 310));
  b.failure(t + 310); // 400
  EXPECT_TRUE(b.allow(t + 710));
  b.failure(t + 710); // 800
  EXPECT_TRUE(b.allow(t + 1510));
  b.failure(t + 1510); // 1600 capped at ban_max_ms = 1000
  EXPECT_EQ(b.banned_until(), t + 2510);
  EXPECT_TRUE(b.allow(t + 2510));
  b.success();
  EXPECT_TRUE(b.allow(t + 2511));
  EXPECT_EQ(b.banned_until(), 0);
}

TEST(Board, FallbacksCountByShardAndReason) {
  sg::config::Config cfg;
  cfg.shards.resize(2);
  HealthBoard board(cfg, 4, cfg.shards.size());
  board.count_fallback(1, FallbackReason::lag, "s1");
  board.count_fallback(1, FallbackReason::lag, "s1");
  board.count_fallback(0, FallbackReason::read_your_writes, "s0");
  EXPECT_EQ(board.fallbacks(1, FallbackReason::lag), 2u);
  EXPECT_EQ(board.fallbacks(0, FallbackReason::read_your_writes), 1u);
  EXPECT_EQ(board.fallbacks(0, FallbackReason::lag), 0u);
  EXPECT_TRUE(board.allowed(2, 0));
  for (int i = 0; i < 3; ++i)
    board.report_failure(2, 10);
  EXPECT_FALSE(board.allowed(2, 20));
  board.report_success(2);
  EXPECT_TRUE(board.allowed(2, 20));
}

TEST(Lsn, Parses) {
  EXPECT_EQ(parse_lsn("16/B374D848"), 0x16B374D848ULL);
  EXPECT_EQ(parse_lsn("0/0"), 0u);
  EXPECT_FALSE(parse_lsn("16B374D848"));
  EXPECT_FALSE(parse_lsn("x/1"));
}
