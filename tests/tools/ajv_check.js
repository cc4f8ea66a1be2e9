// Validate JSON instances against a JSON schema with ajv in strict mode (draft 2020-12).
// usage: node ajv_check.js SCHEMA.json < [[name, instance], ...]   (prints one line per instance)
// exit 0: all valid; 1: an instance is invalid; 2: the schema does not compile in strict mode.
const fs = require("fs");
const Ajv2020 = require("ajv/dist/2020");
const ajv = new Ajv2020({strict: true, allErrors: true});
let validate;
try {
  validate = ajv.compile(JSON.parse(fs.readFileSync(process.argv[2], "utf8")));
} catch (e) {
  console.log("schema error: " + e.message);
  process.exit(2);
}
let bad = 0;
for (const [name, instance] of JSON.parse(fs.readFileSync(0, "utf8"))) {
  if (validate(instance)) {
    console.log("valid " + name);
  } else {
    bad++;
    console.log("invalid " + name + " " + JSON.stringify(validate.errors));
  }
}
process.exit(bad ? 1 : 0);
