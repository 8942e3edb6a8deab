#include <doctest/doctest.h>

#include <simdjson.h>

#include <cmath>

#include "gw/shm/state_file.hpp"
#include "gw/shm/table.hpp"

using namespace gw::shm;

namespace {
UpstreamRecord upstream(const char* name) {
  UpstreamRecord r{};
  set_name(r.name, name);
  return r;
}
gw::core::Cidr cidr(const char* text) {
  gw::core::Cidr c;
  std::string why;
  REQUIRE(gw::core::parse_cidr(text, c, why));
  return c;
}
RuleSpec ip_rule(const char* id, std::vector<const char*> blocks, const char* up = "pre") {
  RuleSpec r;
  r.id = id;
  r.upstream = up;
  for (auto* b : blocks) r.cidrs.push_back(cidr(b));
  return r;
}
}  // namespace

TEST_SUITE("shm") {
  TEST_CASE("rules: add keeps route order, remove and replace keep address blocks consistent") {
    Table t({4, 4, 4, 8, 8, 8});
    t.add_upstream(upstream("prod"));
    t.add_upstream(upstream("pre"));
    int web_root = t.add_route("web", "root");
    int web_api = t.add_route("web", "api");
    CHECK(t.add_route("admin", "root") == 2);
    CHECK_THROWS_WITH_AS(t.add_route("web", "api"), "route web/api already exists", TableError);

    t.add_rule(web_root, ip_rule("a", {"127.0.0.2", "127.0.0.16/28"}));
    t.add_rule(web_api, ip_rule("b", {"10.0.0.0/8"}));
    t.add_rule(web_root, ip_rule("c", {"192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"}));
    REQUIRE(t.rules().size() == 3);
    CHECK(t.cidrs().size() == 6);
    CHECK(t.find_rule(web_root, "c") == 2);
    CHECK(t.find_rule(web_api, "c") == -1);
    CHECK(t.rule_path(2) == "web/root/c");

    // Removing "a" moves the later blocks down and fixes their rules' offsets.
    t.remove_rule(t.find_rule(web_root, "a"));
    REQUIRE(t.rules().size() == 2);
    CHECK(t.cidrs().size() == 4);
    auto b = t.rule_spec(t.find_rule(web_api, "b"));
    REQUIRE(b.cidrs.size() == 1);
    CHECK(b.cidrs[0].to_string() == "10.0.0.0/8");
    auto c = t.rule_spec(t.find_rule(web_root, "c"));
    REQUIRE(c.cidrs.size() == 3);
    CHECK(c.cidrs[2].to_string() == "203.0.113.0/24");

    // Replacing keeps the rule's place (first match wins), with new blocks.
    RuleSpec nb = ip_rule("b", {"172.16.0.0/12", "127.0.0.0/8"}, "prod");
    nb.header_name = "X-Canary";
    nb.header_value = "1";
    t.replace_rule(t.find_rule(web_api, "b"), nb);
    CHECK(t.find_rule(web_api, "b") == 0);
    auto b2 = t.rule_spec(0);
    CHECK(b2.upstream == "prod");
    REQUIRE(b2.cidrs.size() == 2);
    CHECK(b2.cidrs[1].to_string() == "127.0.0.0/8");
    CHECK(b2.header_name == "X-Canary");
    auto c2 = t.rule_spec(t.find_rule(web_root, "c"));
    REQUIRE(c2.cidrs.size() == 3);
    CHECK(c2.cidrs[0].to_string() == "192.0.2.0/24");
    CHECK(t.cidrs().size() == 5);
  }

  TEST_CASE("rules: every bad input is refused with one clear reason, and capacities hold") {
    Table t({4, 4, 4, 2, 2, 3});
    t.add_upstream(upstream("pre"));
    int r = t.add_route("web", "root");
    RuleSpec none;
    none.id = "x";
    none.upstream = "pre";
    CHECK_THROWS_WITH_AS(t.add_rule(r, none), "a rule needs at least one matcher (ip, header, cookie or percent)",
                         TableError);
    CHECK_THROWS_WITH_AS(t.add_rule(r, ip_rule("x", {"10.0.0.0/8"}, "nope")), "no upstream named \"nope\"", TableError);
    RuleSpec bad_header = none;
    bad_header.header_name = "X Bad";
    bad_header.header_value = "1";
    CHECK_THROWS_WITH_AS(t.add_rule(r, bad_header),
                         "header name \"X Bad\" is not a field name (a token of at most 47 bytes)", TableError);
    RuleSpec bad_value = none;
    bad_value.cookie_name = "beta";
    bad_value.cookie_value = "a;b";
    CHECK_THROWS_AS(t.add_rule(r, bad_value), TableError);
    RuleSpec not_utf8 = none;  // the state file is JSON: it could not be read back
    not_utf8.header_name = "X-Canary";
    not_utf8.header_value = "caf\xe9";
    CHECK_THROWS_WITH_AS(t.add_rule(r, not_utf8), "header value is not valid UTF-8", TableError);
    not_utf8.header_value = "caf\xc3\xa9";  // UTF-8 is fine
    CHECK(check_rule(not_utf8).empty());
    RuleSpec pct = none;
    pct.percent_bp = 10001;
    CHECK_THROWS_WITH_AS(t.add_rule(r, pct), "percent must be 0..100", TableError);
    RuleSpec bad_id = ip_rule("bad id", {"10.0.0.0/8"});
    CHECK_THROWS_AS(t.add_rule(r, bad_id), TableError);

    t.add_rule(r, ip_rule("a", {"10.0.0.0/8", "11.0.0.0/8"}));
    CHECK_THROWS_WITH_AS(t.add_rule(r, ip_rule("a", {"12.0.0.0/8"})), "rule web/root/a already exists", TableError);
    CHECK_THROWS_WITH_AS(t.add_rule(r, ip_rule("b", {"12.0.0.0/8", "13.0.0.0/8"})),
                         "address block table is full: 2 in use, 2 more asked, shm.max_rule_cidrs = 3", TableError);
    t.add_rule(r, ip_rule("b", {"12.0.0.0/8"}));
    // Replacing a rule frees its own blocks first: the others' are counted.
    CHECK_THROWS_WITH_AS(t.replace_rule(t.find_rule(r, "a"), ip_rule("a", {"1.0.0.0/8", "2.0.0.0/8", "3.0.0.0/8"})),
                         "address block table is full: 1 in use by other rules, 3 asked, shm.max_rule_cidrs = 3",
                         TableError);
    RuleSpec p = none;
    p.id = "c";
    p.percent_bp = 500;
    CHECK_THROWS_WITH_AS(t.add_rule(r, p), "rule table is full (shm.max_rules = 2)", TableError);
    t.add_route("web", "second");
    CHECK_THROWS_WITH_AS(t.add_route("web", "more"), "route table is full (shm.max_routes = 2)", TableError);
    CHECK(t.rules().size() == 2);
    CHECK(t.cidrs().size() == 3);
  }

  TEST_CASE("rules: a percentage is taken only if basis points hold it exactly") {
    int32_t bp = -1;
    CHECK((percent_to_bp(0, bp) && bp == 0));
    CHECK((percent_to_bp(12.34, bp) && bp == 1234));  // 1233.9999999999998 in binary
    CHECK((percent_to_bp(0.01, bp) && bp == 1));
    CHECK((percent_to_bp(100, bp) && bp == 10000));
    CHECK_FALSE(percent_to_bp(0.001, bp));  // would be 0: a rule that never matches
    CHECK_FALSE(percent_to_bp(12.345, bp));
    CHECK_FALSE(percent_to_bp(-0.01, bp));
    CHECK_FALSE(percent_to_bp(100.01, bp));
    CHECK_FALSE(percent_to_bp(std::nan(""), bp));
  }

  TEST_CASE("rules round-trip through the state file's JSON, values with quotes included") {
    Table t({4, 4, 4, 4, 4, 16});
    t.add_upstream(upstream("pre"));
    int r = t.add_route("web", "root");
    t.add_route("web", "empty");
    RuleSpec s = ip_rule("all", {"127.0.0.2", "fd00::/8"});
    s.header_name = "X-Canary";
    s.header_value = "say \"hi\" \\ there";
    s.cookie_name = "beta";
    s.cookie_value = "yes";
    s.percent_bp = 550;
    t.add_rule(r, s);
    State st = state_from_table(t);
    REQUIRE(st.has_routes);
    REQUIRE(st.routes.size() == 2);
    CHECK(st.routes[1].rules.empty());

    std::string json = rule_to_json(s);
    simdjson::dom::parser parser;
    simdjson::dom::element e;
    REQUIRE(parser.parse(json).get(e) == simdjson::SUCCESS);
    RuleSpec back;
    std::string why;
    REQUIRE_MESSAGE(rule_from_json(e, back, why), why);
    CHECK(back.id == "all");
    CHECK(back.header_value == s.header_value);
    CHECK(back.cookie_value == "yes");
    CHECK(back.percent_bp == 550);
    REQUIRE(back.cidrs.size() == 2);
    CHECK(back.cidrs[1].to_string() == "fd00::/8");
    CHECK(describe_rule(back) ==
          "ip=127.0.0.2/32,fd00::/8 header=X-Canary=say \"hi\" \\ there cookie=beta=yes percent=5.5 -> pre");
  }
}
