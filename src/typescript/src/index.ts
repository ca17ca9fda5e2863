// assigncore's TypeScript client: the generated messages and service descriptors
// (gen/, from protos/ by `npm run generate`) and the Console helper.
export { ActionError, Console, type ConsoleOptions } from "./console.js";
export * from "../gen/assigncore/v1/common_pb.js";
export * from "../gen/assigncore/v1/console_service_pb.js";
export * from "../gen/assigncore/v1/intake_service_pb.js";
export * from "../gen/assigncore/v1/supervisor_service_pb.js";
export * from "../gen/assigncore/v1/admin_service_pb.js";
