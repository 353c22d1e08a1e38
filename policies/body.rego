# The body the policy judges: a write whose body the policy must inspect is denied when the proxy could not
# read it. The proxy parses JSON, Stripe forms and multipart; any other content type reaches the policy as a
# null body (only its hash is known). Judging such a request by its other fields would let an agent hide the
# fields that matter (a token's permission groups, a payment's amount) behind an unusual content type, and a
# human asked to approve it would see nothing either: never allow or approve what could not be read.
#
# Which actions need their body, and how much, is data.actions[<action>].body (see actions/data.yaml):
#   required  the body must be an object (for DELETE: it may be empty, but not unreadable)
#   readable  the body may be empty, but not unreadable, and not a JSON value other than an object
package tollgate.body

# SHA-256 of zero bytes: the proxy reports a null body with this hash when there was no body at all.
empty_sha256 := "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

value := data.tollgate.lib.get(input.request, "body")

deny contains {"rule": "body.unreadable", "message": msg} if {
	# A parsed object is what every action expects: most requests stop here.
	not data.tollgate.lib.body
	msg := problem(data.actions[input.action.name].body)
	is_string(msg)
}

# problem(mode): what is wrong with a body that is not an object, or undefined when that is fine.
problem(mode) := sprintf("%s needs a readable body: %s; send it as application/json (Cloudflare) or application/x-www-form-urlencoded (Stripe)", [data.tollgate.lib.action_name, found]) if {
	mode == "required"
	input.request.method != "DELETE"
} else := sprintf("%s: the body (content-type %s) could not be read, and the policy never passes what it could not read; send it empty, as JSON or as a form", [data.tollgate.lib.action_name, content_type]) if {
	mode in {"required", "readable"}
	unreadable
} else := sprintf("%s: the body must be an object, not %s; send a JSON object or a form", [data.tollgate.lib.action_name, type_name(value)]) if {
	mode == "readable"
	value != null
}

# A null body that was not empty: bytes the proxy could not parse. A missing hash counts as not empty.
unreadable if {
	value == null
	not input.request.body_sha256 == empty_sha256
}

content_type := ct if {
	ct := input.request.headers["content-type"]
	is_string(ct)
} else := "none"

found := sprintf("its content-type %s is not one the proxy parses", [content_type]) if unreadable

else := "the request has no body" if value == null

else := sprintf("the body is %s, not an object", [type_name(value)])
