// Names for plan enums (logs and tests).
#include "router/plan.h"

namespace sg::router {

const char *to_string(StmtKind k) {
  switch (k) {
  case StmtKind::read:
    return "read";
  case StmtKind::write:
    return "write";
  case StmtKind::ddl:
    return "ddl";
  case StmtKind::begin:
    return "begin";
  case StmtKind::commit:
    return "commit";
  case StmtKind::rollback:
    return "rollback";
  case StmtKind::savepoint:
    return "savepoint";
  case StmtKind::set:
    return "set";
  case StmtKind::set_local:
    return "set_local";
  case StmtKind::reset_all:
    return "reset_all";
  case StmtKind::discard_all:
    return "discard_all";
  case StmtKind::deallocate:
    return "deallocate";
  case StmtKind::other:
    return "other";
  }
  return "?";
}

} // namespace sg::router
