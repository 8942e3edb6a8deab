// RoundRobin is header-only (its pick() is a template over the eligibility
// predicate, inlined into the worker's hot path); this file anchors the module.
#include "gw/balance/round_robin.hpp"
