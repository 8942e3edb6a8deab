#include <doctest/doctest.h>

#include "gw/api/guard.hpp"

using gw::api::query_name;
using gw::api::QueryName;

TEST_SUITE("api") {
  TEST_CASE("query argument names are compared as the host decodes them") {
    CHECK(query_name("apikey", "apikey") == QueryName::match);
    CHECK(query_name("api%6Bey", "apikey") == QueryName::match);
    CHECK(query_name("%61%70%69%6b%65%79", "apikey") == QueryName::match);
    CHECK(query_name("apikeys", "apikey") == QueryName::other);
    CHECK(query_name("apike", "apikey") == QueryName::other);
    CHECK(query_name("", "apikey") == QueryName::other);
    CHECK(query_name("APIKEY", "apikey") == QueryName::other);   // names are case-sensitive
    CHECK(query_name("api+key", "apikey") == QueryName::other);  // '+' is a space
    CHECK(query_name("api+key", "api key") == QueryName::match);
    CHECK(query_name("api%2Bkey", "api+key") == QueryName::match);
    CHECK(query_name("api%2", "apikey") == QueryName::malformed);
    CHECK(query_name("apikey%", "apikey") == QueryName::malformed);
    CHECK(query_name("api%zzkey", "apikey") == QueryName::malformed);
    CHECK(query_name("other%g0", "apikey") == QueryName::malformed);  // whatever it is, it is ambiguous
  }
}
