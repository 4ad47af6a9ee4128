// Client session, part: settings (SET tracking and replay) and transaction state. See session.h.
#include "proxy/session.h"

#include "proxy/errors.h"
#include "proxy/session_util.h"

#include <algorithm>

namespace sg::proxy {

// ---------------------------------------------------------------- settings

uint64_t Session::hash_settings(const std::map<std::string, std::string> &s) {
  if (s.empty())
    return 0;
  std::string all;
  for (auto &[k, v] : s)
    all += k + '\n' + v + '\n';
  return std::hash<std::string>{}(all) | 1;
}

void Session::rehash_settings() {
  settings_hash_ = hash_settings(settings_);
  app_check_ = true;
}

// Records a SET the client ran, in canonical form; false when the proxy cannot rebuild it, in
// which case the caller marks the backend it ran on for a reset.
bool Session::set_setting(const std::string &name, const std::string &stmt) {
  auto canon = router::canonical_set(stmt);
  if (!canon)
    return false;
  note_settings_change();
  if (canon->starts_with("RESET ")) {
    // RESET goes back to the value the client connected with, as in PostgreSQL.
    if (auto it = startup_settings_.find(name); it != startup_settings_.end())
      settings_[name] = it->second;
    else
      settings_.erase(name);
  } else {
    settings_[name] = *canon;
  }
  rehash_settings();
  return true;
}

// After a SET, RESET or RESET ALL (sp, text) succeeded on b: the session's settings change,
// and b holds them, except what a RESET gave the server's default where the session has a
// startup value (set again before b serves next).
void Session::settings_ran(BackendConn &b, const router::StatementPlan &sp,
                           const std::string &text) {
  bool untracked = b.settings.count("\x01untracked") > 0;
  if (sp.kind == router::StmtKind::reset_all) {
    note_settings_change();
    settings_ = startup_settings_;
    rehash_settings();
    b.settings.clear(); // the server's defaults, untracked ones too
    b.settings_hash = 0;
    b.epoch_tag = 0;
    return;
  }
  untracked |= !set_setting(sp.set_name, text);
  b.settings = settings_;
  b.settings_hash = settings_hash_;
  if (sp.tag == "RESET" && startup_settings_.count(sp.set_name)) {
    b.settings.erase(sp.set_name);
    b.settings_hash = 1;
  }
  if (untracked)
    mark_untracked(b);
}

// The backend holds a setting the proxy does not track: the next checkout sends RESET ALL.
void Session::mark_untracked(BackendConn &b) {
  b.settings["\x01untracked"] = "";
  b.settings_hash = 1;
}

std::string Session::stmt_key(const std::string &text, const std::vector<uint32_t> &types) const {
  std::string k = text;
  k.push_back('\0');
  for (uint32_t t : types)
    k.append(reinterpret_cast<const char *>(&t), 4);
  // A prepared statement resolves names with the search_path it was prepared under.
  if (auto it = settings_.find("search_path"); it != settings_.end())
    k += '\0' + it->second;
  return k;
}

// ---------------------------------------------------------------- transactions

void Session::fail_transaction_by_proxy() {
  tx_ = 'E';
  proxy_failed_ = true;
  app_check_ = true; // the failure restores the settings the transaction began with
}

// Before the first settings change of a request that began outside a transaction.
void Session::note_settings_change() {
  if (!in_tx() && !settings_before_)
    settings_before_ = settings_;
}

// The implicit transaction of a request failed: the SETs it ran are undone, on the server too.
// settings_before_ stays as it was: the ReadyForQuery's report still reads it (report_app).
void Session::restore_settings() {
  settings_ = *settings_before_;
  rehash_settings();
  for (auto &a : attached_)
    if (a.conn) {
      a.conn->settings = settings_;
      a.conn->settings_hash = settings_hash_;
    }
}

// BEGIN inside a transaction, answered by the proxy: PostgreSQL's warning comes first.
void Session::already_in_tx() {
  protocol::ErrorInfo n;
  n.severity = "WARNING";
  n.sqlstate = "25001";
  n.message = "there is already a transaction in progress";
  protocol::notice_response(*sink_, n);
}

// The transaction ended (the client was told 'I'): settings roll back with it if it did.
void Session::apply_tx_end() {
  app_check_ = true;
  if (last_rollback_) {
    settings_ = tx_settings_snapshot_;
    rehash_settings();
    for (auto &a : attached_)
      if (a.conn) {
        a.conn->settings = settings_;
        a.conn->settings_hash = settings_hash_;
      }
  }
  if (tx_wrote_ && tx_shard_ >= 0)
    ryw_at_[size_t(tx_shard_)] = now_ms();
  if (multi_tx()) {
    for (size_t s = 0; s < attached_.size() && s < 64; ++s) {
      if ((tx_writers_ >> s) & 1)
        ryw_at_[s] = now_ms();
      // A shard still in the transaction when it ended elsewhere (the extended protocol ended
      // it on its home shard): the connection is closed, which rolls it back.
      if (((tx_shards_ >> s) & 1) && attached_[s].conn && attached_[s].conn->tx_status != 'I')
        attached_[s].conn->broken = true;
    }
  }
  if (multi_tx() && cancel_)
    cancel_->set_many({});
  tx_shards_ = tx_writers_ = 0;
  portal_shard_.clear();
  tx_begin_.clear();
  tx_savepoints_ = false;
  tx_wrote_ = false;
  tx_read_only_ = false;
  tx_ = 'I';
  tx_shard_ = -1;
  deferred_.clear();
  proxy_failed_ = false;
  if (!portals_.empty()) { // portals end with their transaction
    portals_.clear();
    virtual_portals_.clear();
  }
}

} // namespace sg::proxy
