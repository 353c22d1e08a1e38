# Shared helpers of the policy library: reading the request without coercing types, the agent's labels, time
# and money formatting.
#
# Every helper that takes a value from the request checks its type before any builtin touches it. A builtin
# given the wrong type (to_number("1e3"), time.parse_rfc3339_ns("tomorrow"), lower(5)) fails the whole
# evaluation, which the proxy turns into policy_unavailable: closed, but with no reason an agent or reviewer
# can act on. So helpers are undefined for bad values, and the rules that use them deny with a message.
package tollgate.lib

# The request body when the proxy could parse it into an object (JSON, Stripe form, multipart); undefined
# otherwise. body.rego denies writes whose body it needs but could not read.
body := input.request.body if is_object(input.request.body)

# get(o, k): o[k], or null when o is not an object or has no k. Rules compare with null instead of letting an
# absent field make them silently undefined.
get(o, k) := object.get(o, k, null) if is_object(o)

else := null

# A JSON number with no fractional part. 1.0 counts (JSON does not distinguish it from 1); 1.5 and "1" do not.
is_int(x) if {
	is_number(x)
	x == floor(x)
}

# A Stripe form integer: the value is a string of 1-15 ASCII digits ("1999"; leading zeros are read the way
# Stripe reads them, "007" is 7). Undefined for "12.5", "-3", "1e3", "", " 1", and for anything that is not
# a string (form bodies carry only strings). 15 digits keep the number exact.
form_int(s) := decimal(s) if {
	is_string(s)
	count(s) <= 15
	digits(s)
}

# digits(s): s is one or more ASCII digits. (String builtins, not regex.match: the RVM compiles a regex on
# every call, ~25 us.)
digits(s) if {
	s != ""
	trim_left(s, "0123456789") == ""
}

# decimal(s): the number a string of ASCII digits spells. to_number alone refuses leading zeros ("08").
decimal(s) := to_number(t) if {
	t := trim_left(s, "0")
	t != ""
} else := 0

# show(v): a value as it appears in a message, strings quoted, so that "10" and 10 read differently.
show(v) := sprintf("\"%s\"", [v]) if is_string(v)

else := "null" if v == null

else := sprintf("%v", [v])

# listing(s): the members of a set or array, sorted and comma-separated, or "none".
listing(s) := concat(", ", sort(s)) if count(s) > 0

else := "none"

# action_name: the action's name for messages; a name that is not a string (the proxy never sends one) is
# shown with %v, since OPA's sprintf prints "%s" of a number as "%!s(int64=7)".
action_name := input.action.name if is_string(input.action.name)

else := sprintf("%v", [input.action.name])

# params: the path variables (input.action.params) as an object; {} when the input has none or another type,
# so that object.get and a `not` read it alike on every engine (object.get errors on a non-object).
params := input.action.params if is_object(input.action.params)

else := {}

# hours(seconds): a duration in hours with one decimal ("24.0", "36.5"), from whole numbers only: OPA's
# sprintf prints "%.1f" of an integer as "%!f(int64=24)", and the two engines' arithmetic on fractions differs
# in the last bits.
hours(seconds) := sprintf("%d.%d", [floor(t / 10), t % 10]) if {
	t := round(seconds / 360)
}

# mul_ceil(n, rate): n x rate rounded up to a whole number, with the rate read to a millionth. OPA and
# regorus compute 3000 x 0.3 as 900.0000000000001 and 900, which ceil tells apart; so the rate becomes a
# whole number of millionths first and only whole numbers are multiplied (the one division is exact
# whenever the true result is whole).
mul_ceil(n, rate) := ceil((n * round(rate * 1000000)) / 1000000)

# usd(cents): "$10.44".
usd(cents) := sprintf("$%d.%02d", [floor(cents / 100), cents % 100]) if is_int(cents)

else := sprintf("%v cents", [cents])

# listed(label, id): the agent's label `label` (comma-separated ids, spaces ignored) lists `id`.
listed(label, id) if {
	is_string(input.agent.labels[label])
	id in split(replace(input.agent.labels[label], " ", ""), ",")
}

# Label sets. Agent labels `accounts` and `zones` hold comma-separated Cloudflare ids the agent may change.
# Undefined when the agent has no such label (placement.rego denies); spaces and empty items are ignored.
agent_accounts := label_set("accounts")

agent_zones := label_set("zones")

label_set(name) := {id |
	some raw in split(input.agent.labels[name], ",")
	id := trim_space(raw)
	id != ""
} if is_string(input.agent.labels[name])

# The agent's scopes as a set (non-strings dropped).
agent_scopes := {s | some s in input.agent.scopes; is_string(s)} if is_array(input.agent.scopes)

else := set()

# Who the agent is, for messages: agent 'deployer' (team web).
agent_desc := sprintf("agent '%s' (team %s)", [input.agent.name, input.agent.team]) if {
	is_string(input.agent.name)
	is_string(input.agent.team)
} else := sprintf("agent '%v' (no team)", [input.agent.name])

# rfc3339_ns(s): nanoseconds since the epoch of an RFC 3339 date-time "2026-12-01T00:00:00Z" (fraction and
# offset allowed, upper-case T and Z), or undefined when s is not one. Every field is checked first, because
# time.parse_rfc3339_ns errors (rather than fails) on "2026-02-30T00:00:00Z". Years are limited to
# 1970-2200, well inside what nanoseconds in 64 bits can hold.
rfc3339_ns(s) := time.parse_rfc3339_ns(s) if {
	is_string(s)
	count(s) >= 20
	substring(s, 4, 1) == "-"
	substring(s, 7, 1) == "-"
	substring(s, 10, 1) == "T"
	substring(s, 13, 1) == ":"
	substring(s, 16, 1) == ":"
	digits(concat("", [substring(s, 0, 4), substring(s, 5, 2), substring(s, 8, 2), substring(s, 11, 2), substring(s, 14, 2), substring(s, 17, 2)]))
	year := decimal(substring(s, 0, 4))
	month := decimal(substring(s, 5, 2))
	day := decimal(substring(s, 8, 2))
	year >= 1970
	year <= 2200
	month >= 1
	month <= 12
	day >= 1
	day <= days_in_month(year, month)
	decimal(substring(s, 11, 2)) <= 23
	decimal(substring(s, 14, 2)) <= 59
	decimal(substring(s, 17, 2)) <= 59
	time_zone_ok(substring(s, 19, -1))
}

# What follows the seconds: an optional fraction (.1 to .123456789), then Z or +hh:mm / -hh:mm.
time_zone_ok(rest) if {
	endswith(rest, "Z")
	fraction_ok(trim_suffix(rest, "Z"))
}

time_zone_ok(rest) if {
	count(rest) >= 6
	offset := substring(rest, count(rest) - 6, 6)
	substring(offset, 0, 1) in {"+", "-"}
	substring(offset, 3, 1) == ":"
	digits(concat("", [substring(offset, 1, 2), substring(offset, 4, 2)]))
	decimal(substring(offset, 1, 2)) <= 23
	decimal(substring(offset, 4, 2)) <= 59
	fraction_ok(substring(rest, 0, count(rest) - 6))
}

fraction_ok(f) if f == ""

fraction_ok(f) if {
	startswith(f, ".")
	count(f) <= 10
	digits(substring(f, 1, -1))
}

month_days := [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]

days_in_month(year, month) := 29 if {
	month == 2
	leap_year(year)
} else := month_days[month - 1]

leap_year(y) if {
	y % 4 == 0
	y % 100 != 0
}

leap_year(y) if y % 400 == 0
