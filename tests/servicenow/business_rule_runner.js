// Runs one generated Business Rule script (read from stdin) under stand-ins for the ServiceNow
// APIs it calls, and prints the request it sent as JSON: {endpoint, method, headers, body, now}.
// The record is the incident 0123...cdef at sys_mod_count 7, changed by jane.agent.
"use strict";
const crypto = require("crypto");

const VALUES = {
  sys_mod_count: "7",
  sys_updated_on: "2026-12-07 10:00:00",
  sys_updated_by: "jane.agent",
  sys_created_on: "2026-12-07 10:00:00",
  sys_created_by: "jane.agent",
  name: "incident",
  element_id: "0123456789abcdef0123456789abcdef",
};
const current = {
  getTableName: () => "incident",
  getUniqueValue: () => VALUES.element_id,
  getValue: (field) => VALUES[field],
};
function GlideRecord(table) {
  this.get = (sysId) => table === "incident" && sysId === VALUES.element_id;
  this.getValue = (field) => VALUES[field];
}
const now = Date.now();
function GlideDateTime() {
  this.getNumericValue = () => now;
}
function GlideCertificateEncryption() {
  // As documented: the key comes base64-encoded, the MAC goes back base64-encoded.
  this.generateMac = (key, algorithm, data) => {
    if (algorithm !== "HmacSHA256") throw new Error("unexpected algorithm " + algorithm);
    return crypto.createHmac("sha256", Buffer.from(key, "base64")).update(data, "utf8").digest("base64");
  };
}
const sent = { headers: {}, now: Math.floor(now / 1000) };
const sn_ws = {
  RESTMessageV2: function () {
    this.setEndpoint = (url) => (sent.endpoint = url);
    this.setHttpMethod = (method) => (sent.method = method);
    this.setRequestHeader = (name, value) => (sent.headers[name] = value);
    this.setRequestBody = (body) => (sent.body = body);
    this.setHttpTimeout = () => {};
    this.execute = () => process.stdout.write(JSON.stringify(sent));
  },
};

const script = require("fs").readFileSync(0, "utf8");
new Function("current", "previous", "GlideRecord", "GlideDateTime", "GlideCertificateEncryption", "sn_ws", script)(
  current, null, GlideRecord, GlideDateTime, GlideCertificateEncryption, sn_ws
);
