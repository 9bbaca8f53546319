export * from "./constants.js";
export * from "./abi.js";
export * from "./voucher.js";
export * from "./store.js";
export * from "./scheme.js";
export * from "./fetch.js";
export * from "./axios.js";
export * from "./server.js";
