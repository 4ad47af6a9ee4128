#!/usr/bin/env node
// Validates an OpenAPI 3.0 document: node validate.js FILE. Prints "valid" and exits 0, or
// prints what is wrong and exits 1 (2 for a usage error).
//
// The file is read with JSON.parse first because the proxy serves it verbatim as JSON (the
// parser's YAML fallback would let a trailing comma through). swagger-parser checks the
// document against the OpenAPI schema and resolves every $ref; its semantic checks cover
// Swagger 2.0 only, so the few that matter for 3.0 are done here.
'use strict';

const fs = require('fs');
const SwaggerParser = require('@apidevtools/swagger-parser');

const METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'];

// Path templates and path parameters agree, operationIds are unique (both read on the resolved
// document `api`), and every name a schema lists as required is one of its properties (read on
// the document as written, `raw`, so that a problem is reported where it is written).
function semantic_problems(raw, api) {
  const problems = [];
  const operation_ids = new Set();
  for (const [path, item] of Object.entries(api.paths)) {
    const in_template = [...path.matchAll(/\{([^}]+)\}/g)].map((m) => m[1]);
    for (const method of METHODS.filter((m) => item[m])) {
      const op = item[method];
      const where = `${method.toUpperCase()} ${path}`;
      const declared = [...(item.parameters || []), ...(op.parameters || [])]
        .filter((p) => p.in === 'path').map((p) => p.name);
      for (const name of in_template.filter((n) => !declared.includes(n)))
        problems.push(`${where}: path parameter {${name}} is not declared`);
      for (const name of declared.filter((n) => !in_template.includes(n)))
        problems.push(`${where}: path parameter "${name}" is not in the path`);
      if (op.operationId && operation_ids.has(op.operationId))
        problems.push(`${where}: operationId "${op.operationId}" is used twice`);
      operation_ids.add(op.operationId);
    }
  }
  const seen = new Set();
  (function walk(node, where) {
    if (node === null || typeof node !== 'object' || seen.has(node)) return;
    seen.add(node);
    if (Array.isArray(node.required) && node.properties)
      for (const name of node.required.filter((n) => !(n in node.properties)))
        problems.push(`${where}: required "${name}" is not among the properties`);
    for (const [key, child] of Object.entries(node)) walk(child, `${where}/${key}`);
  })(raw, '#');
  return problems;
}

async function main(argv) {
  if (argv.length !== 1) {
    console.error('usage: node validate.js FILE');
    return 2;
  }
  const file = argv[0];
  let raw;
  try {
    raw = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    console.error(`${file}: not valid JSON: ${err.message}`);
    return 1;
  }
  let api;
  try {
    api = await SwaggerParser.validate(structuredClone(raw));
  } catch (err) {
    console.error(`${file}: invalid OpenAPI document:\n${err.message}`);
    return 1;
  }
  const problems = semantic_problems(raw, api);
  if (problems.length) {
    console.error(`${file}: invalid OpenAPI document:\n  ${problems.join('\n  ')}`);
    return 1;
  }
  console.log('valid');
  return 0;
}

main(process.argv.slice(2)).then((code) => { process.exitCode = code; });
