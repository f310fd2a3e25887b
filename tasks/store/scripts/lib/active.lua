-- piece active: the states in which an export is still polled (policy.ACTIVE_STATES).
local function is_active(state)
  return state == 'pending' or state == 'running'
end
