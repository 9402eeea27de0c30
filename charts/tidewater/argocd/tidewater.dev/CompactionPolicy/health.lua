-- Argo CD health check for tidewater.dev/CompactionPolicy (Lua 5.1, as Argo CD runs it).
-- Degraded:    a Degraded=True condition of the current generation (the last run failed, or
--              the spec has a problem CEL cannot see).
-- Progressing: no status yet, or a generation the operator has not observed.
-- Suspended:   spec.suspend is true.
-- Healthy:     Ready=True (valid and scheduled); the message names the next run.
local hs = {}

local function find(conditions, kind)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local generation = obj.metadata and obj.metadata.generation
local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to reconcile the policy"
  return hs
end

local degraded = find(status.conditions, "Degraded")
local current = degraded ~= nil and (degraded.observedGeneration == nil or generation == nil
  or degraded.observedGeneration >= generation)
if degraded ~= nil and degraded.status == "True" and current then
  hs.status = "Degraded"
  hs.message = degraded.reason or "Degraded"
  if degraded.message ~= nil and degraded.message ~= "" then
    hs.message = hs.message .. ": " .. degraded.message
  end
  return hs
end
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation
  return hs
end
if obj.spec ~= nil and obj.spec.suspend == true then
  hs.status = "Suspended"
  hs.message = "spec.suspend is true: no runs are scheduled"
  return hs
end
local ready = find(status.conditions, "Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or "Scheduled"
  return hs
end
hs.status = "Progressing"
hs.message = (ready and ready.message) or "Waiting for the policy to be scheduled"
return hs
