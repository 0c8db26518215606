#
# Cookbook:: backup_agent
# Library:: maintenance_config
#
# The maintenance node's config.yaml (recipe[backup_agent::maintenance]): its storage from the
# maintenance data bag item, the retention it applies from attributes. Pure, for ChefSpec.

require_relative 'secret_keys'

module BackupAgentCookbook
  module MaintenanceConfig
    module_function

    # settings: node['backup_agent']['maintenance'] as plain data; secrets: the checked item values.
    def build(settings, secrets, environment)
      storage = SecretKeys::STORAGE.each_with_object({}) do |key, out|
        out[key] = secrets[key] if secrets[key]
      end
      storage['object_lock'] = settings['object_lock'].to_hash if settings['object_lock']
      maintenance = { 'under' => settings['under'].to_s }
      maintenance['retention'] = settings['retention'].to_hash unless settings['retention'].to_hash.empty?
      maintenance['jobs'] = settings['jobs'].to_hash unless settings['jobs'].to_hash.empty?
      maintenance['nodes'] = settings['nodes'].to_a unless settings['nodes'].to_a.empty?
      maintenance['ebs_regions'] = settings['ebs_regions'].to_a unless settings['ebs_regions'].to_a.empty?
      config = { 'node' => 'maintenance', 'state_dir' => settings['state_dir'], 'storage' => storage,
                 'maintenance' => maintenance, 'jobs' => {} }
      config['environment'] = environment if environment && !environment.to_s.empty?
      config
    end
  end
end
